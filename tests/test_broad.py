"""Broad text (saekit.broad): reading the packaged corpora, chat rendering, the mixed training stream,
and the held-out outside examples, on tiny stand-in data files and the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from saekit import broad
from saekit.activations import MixedSource, TensorSource
from saekit.corpus import CorpusError, Record


def _conversation(i: int, turns: int = 6, words: int = 30) -> dict:
    a, b = f"user-{i}", f"other-{i}"
    return {"messages": [[{"text": f"turn {t} of talk {i} " + " ".join(f"word{t}x{w}" for w in range(words)),
                           "sender": a if t % 2 == 0 else b}] for t in range(turns)]}


def write_fake_sources(tmp_path, n_conv: int = 28, n_articles: int = 28, bad: bool = True):
    """Files in the two sources' formats; with `bad`, rows the loader must skip and count."""
    chats = {f"c{i}": _conversation(i) for i in range(n_conv)}
    wiki = {f"Article {i}": {"title": f"Article {i}", "extract": f"Article {i} is a topic. " + "Facts follow here. " * 20}
            for i in range(n_articles)}
    if bad:
        chats["lonely"] = {"messages": [[{"text": "anyone there?", "sender": "x"}]]}
        chats["blank"] = {"messages": [[{"text": "  ", "sender": "x"}], [{"text": "hi", "sender": "y"}],
                                       [{"text": "hello", "sender": "x"}]]}
        wiki["Empty"] = {"title": "Empty", "extract": ""}
        wiki["Huge"] = {"title": "Huge", "extract": "x" * (broad.MAX_ARTICLE_CHARS + 1)}
        wiki["Broken"] = {"title": "Broken", "extract": "bad \ud800 byte"}
    paths = {"chitchat": tmp_path / "dataset.json", "wiki": tmp_path / "summaries_en-us.json"}
    paths["chitchat"].write_text(json.dumps(chats))
    paths["wiki"].write_text(json.dumps(wiki))
    return paths


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    paths = write_fake_sources(tmp_path)
    monkeypatch.setattr(broad, "data_file", lambda source: paths[source.name])
    return paths


def test_bad_rows_are_skipped_and_counted(fake_sources):
    chat = broad.load_broad("chitchat")
    wiki = broad.load_broad("wiki")
    assert chat.skipped == {"chitchat: conversation with one speaker": 1, "chitchat: empty message": 1}
    assert wiki.skipped == {"wiki: empty article": 1, "wiki: too long article": 1, "wiki: not valid Unicode article": 1}
    assert len(wiki.records) == 28 and not any(r.id in ("wiki:Empty", "wiki:Huge", "wiki:Broken") for r in wiki.records)
    mixed = broad.load_broad("broad")
    assert mixed.skipped == chat.skipped + wiki.skipped
    assert len(mixed.records) == len(chat.records) + len(wiki.records)


def test_a_corpus_named_broad_warns_with_its_skipped_rows(fake_sources):
    said = r"skipped 3 rows \(wiki: empty article: 1, wiki: not valid Unicode article: 1, wiki: too long article: 1\)"
    with pytest.warns(UserWarning, match=said):
        records = broad.corpus_records("wiki")
    assert all(r.emotion == "" for r in records)


def test_conversations_become_chats_and_plain_text_with_a_fixed_held_out_part(fake_sources):
    records = broad.load_broad("chitchat").records
    chats = [r for r in records if r.meta["format"] == "chat"]
    plain = [r for r in records if r.meta["format"] == "plain"]
    assert chats and plain
    for r in chats:
        roles = [m["role"] for m in r.meta["messages"]]
        assert roles[0] == "user" and all(x != y for x, y in zip(roles, roles[1:]))   # alternating turns
    assert all(r.text.startswith("A: ") and "\nB: " in r.text for r in plain)
    # a conversation's segments share its split; the split is a function of the id alone
    by_conv: dict[str, set] = {}
    for r in records:
        by_conv.setdefault(r.id.rsplit(":", 1)[0], set()).add(r.split)
    assert all(len(s) == 1 for s in by_conv.values())
    assert [r.split for r in broad.load_broad("chitchat").records] == [r.split for r in records]


def test_a_missing_package_names_the_install_command(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(CorpusError, match=r"pip install chitchat-dataset==0.9.0"):
        broad.load_broad("chitchat")


def test_chat_rendering_uses_the_models_template_with_one_bos(tiny_model):
    from saekit.activations import token_ids
    from saekit.model import format_chat

    tok = tiny_model.tokenizer
    messages = [{"role": "user", "content": "How was your day?"}, {"role": "assistant", "content": "Long, but fine."}]
    rec = Record(id="c:0", text="A: How was your day?\nB: Long, but fine.", meta={"messages": messages})
    ids = token_ids(tok, [rec])[0]
    assert tok.decode(ids) == format_chat(tok, messages, add_generation_prompt=False)
    assert "<|im_start|>assistant\n" in tok.decode(ids)
    bos = tok.bos_token_id
    assert ids.count(bos) == 2 and ids[0] == bos and ids[1] != bos   # one BOS, then the assistant turn's marker

    class Encoding(dict):
        @property
        def input_ids(self):
            return self["input_ids"]

    class AddsBos:
        """A tokenizer that adds BOS to plain text and a template that writes it too (Gemma's way)."""
        bos_token_id = 7
        chat_template = "{{ '<s>' }}{% for m in messages %}{{ m['content'] }}{% endfor %}"

        def __call__(self, text, add_special_tokens=True):
            if isinstance(text, list):
                return Encoding(input_ids=[self(t, add_special_tokens)["input_ids"] for t in text])
            ids = [7] if text.startswith("<s>") else []
            ids += [ord(c) for c in text.removeprefix("<s>")]
            return Encoding(input_ids=([7] if add_special_tokens else []) + ids)

        def apply_chat_template(self, messages, chat_template, tokenize, add_generation_prompt):
            from jinja2 import Template
            return Template(chat_template).render(messages=messages)

    ids = token_ids(AddsBos(), [rec])[0]
    assert ids[0] == 7 and ids[1] != 7


def test_the_manifest_names_what_was_read(fake_sources, tiny_model, tmp_path):
    from saekit.harvest import HarvestConfig, harvest

    out = harvest(HarvestConfig(model="tiny", corpus="broad", hooks=["blocks.2.hook_resid_post"], out=str(tmp_path / "b"),
                                max_tokens=64, max_total_tokens=2_000), model=tiny_model)
    manifest = json.loads((out / "manifest.json").read_text())
    docs = manifest["documents"]
    read: dict[str, dict] = {}
    for d in docs:
        source = d["id"].split(":")[0]
        fmt = "plain" if source == "wiki" or not any(
            r.meta.get("messages") for r in broad.load_broad("chitchat").records if r.id == d["id"]) else "chat"
        e = read.setdefault(f"{source} {fmt}", {"documents": 0, "tokens": 0})
        e["documents"] += 1
        e["tokens"] += d["n_tokens"]
    assert {k: {"documents": v["documents"], "tokens": v["tokens"]} for k, v in manifest["sources"].items()} == read
    assert abs(sum(v["share"] for v in manifest["sources"].values()) - 1) < 1e-3
    assert 2_000 <= manifest["total_tokens"] < 2_000 + 64
    assert manifest["skipped_rows"] == {"chitchat: conversation with one speaker": 1, "chitchat: empty message": 1,
                                        "wiki: empty article": 1, "wiki: too long article": 1,
                                        "wiki: not valid Unicode article": 1}


def test_a_mixed_source_gives_each_part_its_share_and_keeps_held_out_apart():
    stories = TensorSource(torch.zeros(3000, 4), -torch.ones(500, 4))
    broad_text = TensorSource(torch.ones(3000, 4), 2 * torch.ones(500, 4))
    mixed = MixedSource({"shipped": stories, "broad": broad_text}, {"shipped": 0.4, "broad": 0.6})
    batches = mixed.batches(100, seed=0)
    for _ in range(5):
        b = next(batches)
        assert b.shape == (100, 4) and int((b[:, 0] == 1).sum()) == 60 and int((b[:, 0] == 0).sum()) == 40
    held = mixed.held_out(50)
    assert int((held[:, 0] == 2).sum()) == 30 and int((held[:, 0] == -1).sum()) == 20   # never a training row
    assert [s["share"] for s in mixed.provenance["saekit_sources"]] == [0.4, 0.6]
    with pytest.raises(Exception, match="add up to 1"):
        MixedSource({"shipped": stories, "broad": broad_text}, {"shipped": 0.5, "broad": 0.6})


@pytest.mark.slow
def test_broad_text_reaches_training_and_outside_examples_but_never_the_ranking(fake_sources, tmp_path):
    """The tiny study with a tiny broad corpus: the SAE trains on both (metadata and metrics say so), the
    ranking tables hold only stories, and the outside examples come from held-out broad documents only."""
    from test_study import write_config

    from saekit.db import read_only_query
    from saekit.study import load_study_config, run_study

    cfg = load_study_config(write_config(tmp_path, broad_corpus="broad", broad_tokens=3_000, broad_share=0.6))
    run_study(cfg)
    out, db = tmp_path / "study", tmp_path / "study.duckdb"
    steps = json.loads((out / "steps.json").read_text())
    assert {"harvest broad text", "outside examples"} <= set(steps)

    sae_cfg = json.loads((out / "sae" / "cfg.json").read_text())
    sources = sae_cfg["metadata"]["saekit_sources"] if "metadata" in sae_cfg else sae_cfg["saekit_sources"]
    assert [(s["name"], s["share"]) for s in sources] == [("shipped", pytest.approx(0.4)), ("broad", 0.6)]
    manifest = json.loads((out / "broad" / "manifest.json").read_text())
    assert sources[1]["saekit_source_counts"] == manifest["sources"]
    metrics = json.loads((out / "sae" / "metrics.json").read_text())
    assert set(metrics["by_source"]) == {"shipped", "broad"} and metrics["shares"] == {"shipped": 0.4, "broad": 0.6}

    def rows(sql):
        return read_only_query(sql, db).to_pylist()
    broad_ids = {d["id"] for d in manifest["documents"]}
    for table, column in (("stories", "story_id"), ("feature_examples", "story_id")):
        ranked = {r["id"] for r in rows(f"SELECT {column} AS id FROM {table} WHERE corpus_id = 'shipped'")}
        assert ranked and not ranked & broad_ids
    assert rows("SELECT DISTINCT corpus_id FROM feature_emotion_stats") == [{"corpus_id": "shipped"}]

    outside = rows("SELECT * FROM feature_examples WHERE kind = 'outside'")
    held = {d["id"] for d in manifest["documents"] if d["split"] == "test"}
    assert outside and {r["corpus_id"] for r in outside} == {"broad"}
    assert {r["story_id"] for r in outside} <= held                 # never a document the SAE trained on
    for r in outside:
        assert len(r["tokens"]) == len(r["token_activations"]) == len(r["token_ids"]) > 0
        assert max(r["token_activations"]) == pytest.approx(r["activation"], rel=1e-4)
    rule = rows("SELECT token_rule FROM runs WHERE kind = 'outside_examples'")
    assert json.loads(rule[0]["token_rule"])["skip_first"] == 1

    # analysis/broad_sae.py (the README's before/after table) reads the same files and tables
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
    import broad_sae

    measured = broad_sae.measure(out, db, out / "activations", out / "broad", str(out / "sae"))
    assert measured["sae"]["broad"]["explained_variance"] == pytest.approx(
        metrics["by_source"]["broad"]["explained_variance"], abs=1e-6)
    assert measured["training"] == {"shipped": 0.4, "broad": 0.6}
    assert "| SAE explained variance, held-out broad tokens |" in broad_sae.table(measured, measured)

    # shown where a person looks: the feature page, the report and the Neuronpedia export
    from starlette.testclient import TestClient

    from saekit.browse.server import create_app
    from saekit.export import BATCH_FILE, export_features

    best = max(outside, key=lambda r: r["activation"])
    f = best["feature"]
    client = TestClient(create_app(str(db)), base_url="http://127.0.0.1:8765")
    page = client.get(f"/feature/sae/{f}.html").text   # the study's SAE folder is named "sae"
    assert "Top passages from outside text" in page and best["story_id"] in page
    assert 'data-kind="outside"' in page
    report = (out / "report.html").read_text()
    assert "top passages from outside text" in report
    export_features(tmp_path / "np", str(db), features=[f])
    acts = json.loads((tmp_path / "np" / BATCH_FILE).read_text())["features"][0]["activations"]
    assert [round(v, 3) for v in best["token_activations"]] in [a["values"] for a in acts]


def test_the_installed_sources_load_with_their_bad_rows_counted():
    """The real packaged files (installed by `make setup`): every conversation and article is either a
    record or a counted skip, and about one in seven is held out."""
    chat, wiki = broad.load_broad("chitchat"), broad.load_broad("wiki")
    conversations = {r.id.rsplit(":", 1)[0] for r in chat.records}
    assert len(conversations) + sum(n for why, n in chat.skipped.items() if "conversation" in why) == 7_168
    assert len(wiki.records) + sum(wiki.skipped.values()) == 10_033
    for loaded in (chat, wiki):
        share = sum(r.split == "test" for r in loaded.records) / len(loaded.records)
        assert 0.10 < share < 0.19
    formats = {r.meta["format"] for r in chat.records}
    assert formats == {"chat", "plain"}
