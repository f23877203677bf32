"""Probes scored beyond the corpus (`saekit rank --eval-corpus`): rows, centring, unknown emotions, bad inputs."""

import json

import pytest
import torch
from conftest import write_jsonl
from typer.testing import CliRunner

from saekit import features as Fe
from saekit import rank as R
from saekit import study_page as SR
from saekit.cli import app
from saekit.corpus import load_corpus
from saekit.db import Database, read_only_query
from saekit.db import summaries as DR
from saekit.harvest import Activations, HarvestConfig, harvest
from saekit.sae import build_training_sae, load_sae, save_sae

HOOK = "blocks.2.hook_resid_post"
HOOKS = ["blocks.1.hook_resid_post", HOOK]
EMOTIONS = ["calm", "afraid", "joyful"]


@pytest.fixture(scope="module")
def study(tiny_model, tmp_path_factory):
    """A tiny harvest of three emotions with two neutral texts, and a random SAE at HOOK."""
    tmp = tmp_path_factory.mktemp("rank_eval")
    records = [r for r in load_corpus(emotions=EMOTIONS) if r.emotion != "neutral" or r.id.endswith(("1", "2"))]
    acts = harvest(HarvestConfig(model="tiny", hooks=HOOKS, token_hooks=[HOOK], out=str(tmp / "acts"), max_tokens=48,
                                 batch_size=16), model=tiny_model, records=records)
    torch.manual_seed(0)
    sae = build_training_sae("topk", 64, 128, k=8, metadata={"hook_name": HOOK, "model_name": "tiny"})
    folder = save_sae(sae, tmp / "sae")
    return {"tmp": tmp, "acts": str(acts), "sae": str(folder), "loaded": load_sae(folder, model=tiny_model).sae,
            "records": records}


def rank(study, tiny_model, db, **kw):
    cfg = R.RankConfig(activations=study["acts"], sae=study["sae"], db=str(db), kmeans_k=2, lens_random=5, **kw)
    with Database(cfg.db) as d:
        return R.run_rank(cfg, sae=study["loaded"], model=tiny_model, tokenizer=tiny_model.tokenizer, db=d)


def unknown_rows():
    return [{"text": "The kettle clicked off and nobody moved to pour it.", "emotion": "bored"},
            {"text": "Another meeting, another slide deck read aloud word for word.", "emotion": "bored"},
            {"text": "Her eyes kept closing over the page she had read three times.", "emotion": "Sleepy"}]


def test_eval_on_the_test_stories_equals_the_test_split_probes(study, tiny_model, tmp_path):
    """The same texts pooled the same way and centred on the train mean score exactly as the test split does."""
    test = [r for r in study["records"] if r.split == "test" and r.emotion in EMOTIONS]
    path = write_jsonl(tmp_path / "eval.jsonl", [{"id": f"e{i}", "text": r.text, "emotion": r.emotion.upper()}
                                                 for i, r in enumerate(test)] + unknown_rows())
    out = rank(study, tiny_model, tmp_path / "f.duckdb", eval_corpus=str(path))
    rows = read_only_query("SELECT * FROM probe_results ORDER BY method, hook", str(tmp_path / "f.duckdb")).to_pylist()
    own = {(r["method"], r["hook"]): r for r in rows if r["corpus_id"] == "shipped"}
    ev = {(r["method"], r["hook"]): r for r in rows if r["corpus_id"] == str(path)}
    assert set(ev) == {("vector_eval", h) for h in HOOKS} | {("sae_eval", HOOK)}
    for (method, hook), r in ev.items():
        ref = own[("vector_projection" if method == "vector_eval" else "sae_top_features", hook)]
        assert r["accuracy"] == pytest.approx(ref["accuracy"]) and r["n_test"] == ref["n_test"] == len(test)
        assert r["train_corpus_id"] == "shipped" and r["centring"] == "train_mean" and r["model_id"] == "tiny"
        assert r["ci_lo"] <= r["accuracy"] <= r["ci_hi"] and r["chance"] == pytest.approx(1 / 3)
        assert json.loads(r["unknown_emotions"]) == {"bored": 2, "sleepy": 1}
        assert (r["sae_id"] is not None) == (method == "sae_eval")
    assert all(r["train_corpus_id"] is None and r["centring"] is None for r in own.values())
    summary = out["summary"]
    assert summary["eval emotions not in the study (texts, not scored)"] == "bored (2), sleepy (1)"
    assert "centred on the train stories' mean" in summary[f"eval vector probe accuracy @ {HOOK}"]
    with Database(str(tmp_path / "f.duckdb"), read_only=True) as db:
        table, sentence = SR.beyond_the_corpus(db, "shipped")
        assert SR.beyond_the_corpus(db, str(path)) is None   # nothing was trained on the eval corpus
        assert {r["method"] for r in DR.latest_probes(db, "shipped")} == {"vector_projection", "vector_logistic",
                                                                           "sae_top_features"}
    assert table.count("<tr>") == 4 and str(path) in table and "train stories' mean" in table
    assert f"On {path} ({len(test)} texts of the study's emotions" in sentence
    assert sentence.endswith("Emotions it names that the study lacks, not scored: bored (2 texts), sleepy (1 text).")


def test_eval_neutral_texts_centre_the_vector_probe(study, tiny_model, tmp_path):
    texts = [{"text": r.text, "emotion": r.emotion} for r in study["records"]
             if r.split == "test" and r.emotion in EMOTIONS][:9]
    neutral = [{"text": "The meeting is moved to Thursday at ten; the room stays the same.", "emotion": "neutral"},
               {"text": "Preheat the oven, then weigh out two hundred grams of flour.", "emotion": "neutral"}]
    path = write_jsonl(tmp_path / "eval.jsonl", texts + neutral)
    db = tmp_path / "f.duckdb"
    out = rank(study, tiny_model, db, eval_corpus=str(path))
    rows = {r["method"] + r["hook"]: r for r in out["eval"]["rows"]}
    assert rows["vector_eval" + HOOK]["centring"] == "eval_neutral_mean"
    assert rows["sae_eval" + HOOK]["centring"] == "train_mean"
    # recompute the vector probe from a harvest of the same file with the study's settings
    ref = Activations.open(harvest(HarvestConfig(model="tiny", hooks=HOOKS, token_hooks=[], out=str(tmp_path / "ref"),
                                                 max_tokens=48, batch_size=16, corpus=str(path)), model=tiny_model))
    labels = [d["label"] for d in ref.documents]
    emo = [i for i, lab in enumerate(labels) if lab != "neutral"]
    pooled = ref.pooled(HOOK)
    centred = pooled[emo] - pooled[[i for i, lab in enumerate(labels) if lab == "neutral"]].mean(0)
    direct = Fe.projection_probe(out["vectors"][HOOK]["vectors"], centred, [labels[i] for i in emo], out["emotions"],
                                 EMOTIONS)
    assert rows["vector_eval" + HOOK]["probe"].accuracy == pytest.approx(direct.accuracy)
    assert rows["vector_eval" + HOOK]["probe"].confusion == direct.confusion
    stored = read_only_query("SELECT centring, n_test, unknown_emotions FROM probe_results WHERE method = 'vector_eval' "
                             f"AND hook = '{HOOK}'", str(db)).to_pylist()
    assert stored == [{"centring": "eval_neutral_mean", "n_test": 9, "unknown_emotions": "{}"}]
    # a rerun replaces the eval rows instead of adding
    rank(study, tiny_model, db, eval_corpus=str(path))
    n = read_only_query("SELECT count(*) AS n FROM probe_results WHERE train_corpus_id IS NOT NULL", str(db)).to_pylist()
    assert n == [{"n": 3}]


def bad_corpora(tmp_path):
    txt = tmp_path / "plain.txt"
    txt.write_text("A line of text without a label.\nAnother one.\n")
    other = tmp_path / "feelings.csv"
    other.write_text("text,feeling\nThe kettle clicked off.,bored\nThe page again.,sleepy\n")
    return [({"eval_corpus": str(txt)}, r"eval corpus .*plain\.txt has no labels in column 'emotion'"),
            ({"eval_corpus": str(other)}, r"feelings\.csv has no labels in column 'emotion'"),
            ({"eval_corpus": str(other), "eval_label_column": "feeling"},
             r"feelings\.csv: none of the labels in column 'feeling' \(bored, sleepy\) is an emotion of the study"),
            ({"eval_corpus": str(tmp_path / "missing.jsonl")}, r"missing\.jsonl does not exist")]


def test_bad_eval_corpus_fails_before_any_compute(study, tmp_path, monkeypatch):
    def no_compute(*a, **k):
        raise AssertionError("computed before the eval corpus was checked")

    monkeypatch.setattr(R.stage, "emotion_vector_analysis", no_compute)
    monkeypatch.setattr(R.eval_corpus, "harvest", no_compute)
    monkeypatch.setattr(R.Ev, "encode_documents", no_compute)
    for kw, message in bad_corpora(tmp_path):
        cfg = R.RankConfig(activations=study["acts"], db=str(tmp_path / "f.duckdb"), **kw)
        with pytest.raises(R.EvalCorpusError, match=message):
            R.run_rank(cfg, sae=study["loaded"])
    assert not (tmp_path / "f.duckdb").exists()


def test_cli_refuses_a_bad_eval_corpus_before_the_model_loads(study, tmp_path, monkeypatch):
    import saekit.model

    def no_model(*a, **k):
        raise AssertionError("the model loaded before the eval corpus was checked")

    monkeypatch.setattr(saekit.model, "load_model", no_model)
    for kw, message in bad_corpora(tmp_path):
        args = ["rank", "--activations", study["acts"], "--db", str(tmp_path / "f.duckdb")]
        args += [a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", v)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "eval corpus" in result.output and "AssertionError" not in result.output


def test_unlabelled_texts_and_unknown_emotions_are_counted_not_scored(study, tmp_path):
    rows = unknown_rows() + [{"text": "No label here.", "emotion": ""}, {"text": "Quiet water.", "emotion": " Calm "}]
    path = write_jsonl(tmp_path / "eval.jsonl", rows)
    ev = R.read_eval_corpus(R.RankConfig(eval_corpus=str(path)), EMOTIONS)
    assert ev.unknown == {"bored": 2, "sleepy": 1} and ev.unlabelled == 1
    assert [r.emotion for r in ev.records] == ["calm"] and ev.corpus_id == str(path)
    assert R.read_eval_corpus(R.RankConfig(), EMOTIONS) is None
