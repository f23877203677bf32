"""Hugging Face datasets as corpora: a saved dataset folder and a local dataset repository, read by
configuration and split or streamed, through load_corpus and `saekit harvest`."""

import importlib.util
import json
import sys

import pytest
from typer.testing import CliRunner

from saekit.cli import app
from saekit.corpus import CorpusError, DatasetOptions, load_corpus
from saekit.harvest import harvest_records

runner = CliRunner()
needs_datasets = pytest.mark.skipif(importlib.util.find_spec("datasets") is None,
                                    reason="the hf extra is not installed: pip install 'saekit[hf]'")


@pytest.fixture
def saved(tmp_path):
    """A DatasetDict saved with save_to_disk: train and validation splits."""
    import datasets

    rows = lambda split, n: {"text": [f"{split} story number {i} about a quiet day" for i in range(n)],  # noqa: E731
                             "emotion": ["calm", "afraid"] * (n // 2)}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows("train", 6)),
                          "validation": datasets.Dataset.from_dict(rows("validation", 4))}).save_to_disk(tmp_path / "ds")
    return tmp_path / "ds"


@pytest.fixture
def repo(tmp_path):
    """A dataset repository folder (data files and a README declaring two configurations)."""
    root = tmp_path / "repo"
    for name, texts in (("first", ["hello from the first", "bye from the first"]), ("second", ["only the second"])):
        (root / name).mkdir(parents=True)
        (root / name / "data.jsonl").write_text("".join(json.dumps({"text": t, "emotion": "calm"}) + "\n" for t in texts))
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {n}\n  data_files:\n  - split: train\n    path: {n}/data.jsonl\n" for n in ("first", "second"))
        + "---\n")
    return root


@needs_datasets
def test_a_saved_folder_is_read_by_split_or_streamed(saved):
    assert [r.text.split()[0] for r in load_corpus(saved)] == ["train"] * 6
    val = load_corpus(saved, dataset=DatasetOptions(split="validation"))
    assert [r.text for r in val][:2] == ["validation story number 0 about a quiet day",
                                         "validation story number 1 about a quiet day"]
    assert [r.emotion for r in val] == ["calm", "afraid"] * 2
    assert not {r.id for r in val} & {r.id for r in load_corpus(saved)}   # splits never share default ids
    streamed = load_corpus(saved, dataset=DatasetOptions(split="validation", streaming=True), limit=3)
    assert [r.text for r in streamed] == [r.text for r in val][:3]
    with pytest.raises(CorpusError, match=r"has no split 'test'; its splits: \['train', 'validation'\]"):
        load_corpus(saved, dataset=DatasetOptions(split="test"))
    with pytest.raises(CorpusError, match="saved with save_to_disk and has no configurations"):
        load_corpus(saved, dataset=DatasetOptions(config="first"))


@needs_datasets
def test_a_dataset_repository_is_read_by_configuration(repo):
    assert [r.text for r in load_corpus(repo, dataset=DatasetOptions(config="second"))] == ["only the second"]
    assert [r.text for r in load_corpus(repo, dataset=DatasetOptions(config="first", streaming=True), limit=1)] == [
        "hello from the first"]
    with pytest.raises(CorpusError, match=r"config third.*'third' not found. Available: \['first', 'second'\]"):
        load_corpus(repo, dataset=DatasetOptions(config="third"))
    with pytest.raises(CorpusError, match="Unknown split \"validation\""):
        load_corpus(repo, dataset=DatasetOptions(config="first", split="validation"))


@needs_datasets
def test_harvest_reads_the_split_asked_for_and_later_stages_see_the_same_texts(saved, tmp_path):
    out = tmp_path / "acts"
    result = runner.invoke(app, ["harvest", "--model", "tiny", "--hook", "blocks.1.hook_resid_post", "--corpus",
                                 str(saved), "--split", "validation", "--streaming", "--limit", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["dataset_split"] == "validation" and manifest["config"]["streaming"] is True
    assert len(manifest["documents"]) == 3 and manifest["prepend_bos"] is False
    records = harvest_records(manifest["config"])   # what training's LM metrics and the ranking read back
    assert [r.id for r in records] == [d["id"] for d in manifest["documents"]]
    assert all(r.text.startswith("validation") for r in records)


def test_dataset_options_on_other_corpora_are_refused(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "a calm day", "emotion": "calm"}) + "\n")
    for source in ("shipped", str(tmp_path / "c.jsonl")):
        with pytest.raises(CorpusError, match="apply to Hugging Face datasets .* not to corpus"):
            load_corpus(source, dataset=DatasetOptions(split="train"))
    result = runner.invoke(app, ["harvest", "--model", "tiny", "--hook", "blocks.1.hook_resid_post", "--corpus",
                                 str(tmp_path / "c.jsonl"), "--streaming", "--out", str(tmp_path / "acts")])
    assert result.exit_code == 2 and "apply to Hugging Face datasets" in " ".join(result.output.split())
    assert not (tmp_path / "acts").exists()


def test_without_the_hf_extra_the_message_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "ds").mkdir()
    monkeypatch.setitem(sys.modules, "datasets", None)   # as if the extra were not installed
    with pytest.raises(CorpusError, match=r"needs the optional extra 'hf': pip install 'saekit\[hf\]'"):
        load_corpus(tmp_path / "ds")
