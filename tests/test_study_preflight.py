"""A study refuses bad input before its first forward pass: nothing is harvested or written."""

import json

import pytest
from test_study import write_config

from saekit.errors import SaekitError
from saekit.study import load_study_config, run_study


@pytest.fixture
def no_forward(monkeypatch):
    """Fail the test if the study reaches the harvest (its first forward pass)."""
    import saekit.harvest

    def refuse(*args, **kwargs):
        raise AssertionError("the study ran the model before refusing its input")

    monkeypatch.setattr(saekit.harvest, "harvest", refuse)


def test_eval_corpus_without_labels_is_refused_before_the_harvest(tmp_path, no_forward):
    corpus = tmp_path / "eval.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(4)))
    cfg = load_study_config(write_config(tmp_path, eval_corpus=str(corpus)))
    with pytest.raises(SaekitError, match=rf"{corpus}.*no labels in column 'emotion'"):
        run_study(cfg)
    assert not (tmp_path / "study" / "activations").exists()


def test_eval_corpus_sharing_no_emotion_is_refused_before_the_harvest(tmp_path, no_forward):
    corpus = tmp_path / "eval.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"text {i}", "emotion": "sleepy"}) + "\n" for i in range(4)))
    cfg = load_study_config(write_config(tmp_path, eval_corpus=str(corpus)))
    with pytest.raises(SaekitError, match=r"none of the labels in column 'emotion' \(sleepy\)"):
        run_study(cfg)


def test_a_bad_experiment_spec_is_refused_before_the_harvest(tmp_path, no_forward):
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "bad"\ntask = "probes"\nmodel = "tiny"\nhook = "blocks.2.hook_resid_post"\n'
                    'no_such_field = 1\n[[conditions]]\nname = "x"\nkind = "steer"\nemotion = "calm"\n')
    cfg = load_study_config(write_config(tmp_path, experiments=[str(spec)]))
    with pytest.raises(SaekitError, match=r"no_such_field"):
        run_study(cfg)
    assert not (tmp_path / "study" / "activations").exists()
