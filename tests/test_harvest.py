import json

import pytest
import torch

from saekit import harvest as H
from saekit.corpus import CorpusError, load_corpus
from saekit.model import hf_model_of

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


def cfg(tmp_path, **kw):
    base = dict(model="tiny", hooks=HOOKS, out=str(tmp_path / "acts"), batch_size=3, docs_per_shard=4,
                max_tokens=128, pool_offset=10)
    base.update(kw)
    return H.HarvestConfig(**base)


def test_per_token_activations_equal_unpadded_forward(tiny_model, small_records, tmp_path):
    out = H.harvest(cfg(tmp_path), model=tiny_model, records=small_records)
    acts = H.Activations.open(out)
    tokens = acts.tokens("blocks.2.hook_resid_post")
    hf = hf_model_of(tiny_model)
    for i in (0, 7, 13):
        doc = acts.documents[i]
        ids = tiny_model.tokenizer(small_records[i].text, return_tensors="pt").input_ids[:, :128]
        with torch.no_grad():
            ref = hf(ids, output_hidden_states=True).hidden_states[3][0]  # after block 2
        got = tokens[doc["token_offset"]: doc["token_offset"] + doc["n_tokens"]]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert acts.manifest["total_tokens"] == tokens.shape[0] == sum(d["n_tokens"] for d in acts.documents)


def test_manifest_describes_every_document_once(tiny_model, small_records, tmp_path):
    out = H.harvest(cfg(tmp_path), model=tiny_model, records=small_records)
    m = json.loads((out / "manifest.json").read_text())
    assert [d["id"] for d in m["documents"]] == [r.id for r in small_records]
    assert m["d_model"] == 64 and m["hooks"] == HOOKS and m["complete"]
    covered = sorted(i for s in m["shards"].values() for i in range(*s["docs"]))
    assert covered == list(range(len(small_records)))
    assert m["config"]["pool_offset"] == 10 and m["saekit_version"]
    assert m["token_rule"]["description"] == "positions >= 1"
    assert m["counted_tokens"] == m["total_tokens"] - len(small_records)
    assert H.summarize(out)["counted tokens"] == f"{m['counted_tokens']} (positions >= 1)"


def test_pooled_mean_starts_at_offset_or_half_for_short_texts(tiny_model, small_records, tmp_path):
    out = H.harvest(cfg(tmp_path), model=tiny_model, records=small_records)
    acts = H.Activations.open(out)
    tokens, pooled = acts.tokens(HOOKS[0]), acts.pooled(HOOKS[0], "mean")
    maxed = acts.pooled(HOOKS[0], "max")
    for i, doc in enumerate(acts.documents):
        a = tokens[doc["token_offset"]: doc["token_offset"] + doc["n_tokens"]]
        start = 10 if doc["n_tokens"] > 10 else doc["n_tokens"] // 2
        torch.testing.assert_close(pooled[i], a[start:].mean(0))
        torch.testing.assert_close(maxed[i], a.max(0).values)
    assert H.pool_start(60, 50) == 50 and H.pool_start(30, 50) == 15


def test_forward_stops_after_last_hooked_layer(tiny_model, small_records, tmp_path):
    calls = []
    layer3 = tiny_model.blocks[3]
    hook = layer3.register_forward_hook(lambda *a: calls.append(1))
    try:
        H.harvest(cfg(tmp_path, hooks=["blocks.1.hook_resid_post"]), model=tiny_model, records=small_records)
    finally:
        hook.remove()
    assert calls == []
    assert H.stop_layer(tiny_model, ["blocks.1.hook_resid_post"]) == 2
    assert H.stop_layer(tiny_model, ["blocks.3.hook_resid_post"]) is None


class Killed(Exception):
    pass


def test_interrupted_harvest_resumes_without_redoing_finished_shards(tiny_model, small_records, tmp_path):
    c = cfg(tmp_path)
    seen = []

    def die_in_second_shard(docs, total, tokens):
        seen.append(docs)
        if docs > 5:
            raise Killed

    with pytest.raises(Killed):
        H.harvest(c, model=tiny_model, records=small_records, progress=die_in_second_shard)
    out = tmp_path / "acts"
    first = out / "shard-00000.safetensors"
    assert first.exists() and not (out / "shard-00001.safetensors").exists()
    with pytest.raises(H.HarvestError, match="unfinished"):
        H.Activations.open(out)
    # a half-written shard left behind must not count as finished
    (out / ".shard-00001.safetensors.partial").write_bytes(b"garbage")
    mtime = first.stat().st_mtime_ns
    H.harvest(c, model=tiny_model, records=small_records)
    assert first.stat().st_mtime_ns == mtime
    resumed = H.Activations.open(out).tokens(HOOKS[1])
    fresh = H.harvest(cfg(tmp_path, out=str(tmp_path / "fresh")), model=tiny_model, records=small_records)
    torch.testing.assert_close(resumed, H.Activations.open(fresh).tokens(HOOKS[1]))
    assert H.Activations.open(out).verify() == []


def test_different_config_in_same_folder_is_refused(tiny_model, small_records, tmp_path):
    H.harvest(cfg(tmp_path), model=tiny_model, records=small_records)
    with pytest.raises(H.HarvestError, match="different config"):
        H.harvest(cfg(tmp_path, pool_offset=3), model=tiny_model, records=small_records)


def test_corrupt_shard_says_which_file(tiny_model, small_records, tmp_path):
    out = H.harvest(cfg(tmp_path), model=tiny_model, records=small_records)
    shard = out / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    acts = H.Activations.open(out)
    assert any("shard-00001" in p for p in acts.verify())
    with pytest.raises(H.HarvestError, match="shard-00001.safetensors is corrupt"):
        acts.tokens(HOOKS[0])


def test_unknown_hook_lists_valid_ones(tiny_model, small_records, tmp_path):
    with pytest.raises(H.HarvestError, match="unknown hook.*blocks.0.hook_resid_post"):
        H.harvest(cfg(tmp_path, hooks=["blocks.9.hook_resid_post"]), model=tiny_model, records=small_records)
    assert not (tmp_path / "acts").exists()


def test_long_texts_are_truncated_with_warning_or_windowed(tiny_model, small_records, tmp_path):
    with pytest.warns(UserWarning, match="truncated"):
        out = H.harvest(cfg(tmp_path, max_tokens=20), model=tiny_model, records=small_records)
    assert max(d["n_tokens"] for d in H.Activations.open(out).documents) == 20
    with pytest.warns(UserWarning, match="windows"):
        out = H.harvest(cfg(tmp_path, max_tokens=20, overflow="window", out=str(tmp_path / "w")),
                        model=tiny_model, records=small_records)
    docs = H.Activations.open(out).documents
    assert any("#w1" in d["id"] for d in docs) and max(d["n_tokens"] for d in docs) == 20


def test_bad_corpus_input_is_named(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(empty)
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text('{"body": "hello"}\n')
    with pytest.raises(CorpusError, match="nocol.jsonl:1: no text column 'text'.*body"):
        load_corpus(nocol)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(CorpusError, match="bad.jsonl:2: not valid JSON"):
        load_corpus(bad)
    binary = tmp_path / "x.parquet"
    binary.write_bytes(b"\x00\x01 not parquet")
    with pytest.raises(CorpusError, match="cannot read .*x.parquet"):
        load_corpus(binary)
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(tmp_path / "missing.jsonl")


def test_other_corpus_formats_load_with_named_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.csv").write_text("body,label\nfirst text,calm\nsecond text,afraid\n")
    recs = load_corpus(tmp_path / "c.csv", text_column="body", label_column="label")
    assert [(r.text, r.emotion) for r in recs] == [("first text", "calm"), ("second text", "afraid")]
    pq.write_table(pa.table({"body": ["a b", "c d"], "label": ["x", "y"]}), tmp_path / "c.parquet")
    assert [r.emotion for r in load_corpus(tmp_path / "c.parquet", text_column="body", label_column="label")] == ["x", "y"]
    (tmp_path / "c.txt").write_text("line one\n\nline two\n")
    assert [r.text for r in load_corpus(tmp_path / "c.txt")] == ["line one", "line two"]
    import datasets

    datasets.Dataset.from_dict({"text": ["u", "v"], "emotion": ["calm", "sad"]}).save_to_disk(tmp_path / "ds")
    assert [r.emotion for r in load_corpus(tmp_path / "ds")] == ["calm", "sad"]


def test_token_hooks_limit_what_is_stored_per_token(tiny_model, small_records, tmp_path):
    out = H.harvest(cfg(tmp_path, token_hooks=[HOOKS[1]]), model=tiny_model, records=small_records)
    acts = H.Activations.open(out)
    assert acts.pooled(HOOKS[0]).shape == (len(small_records), 64)
    assert acts.tokens(HOOKS[1]).shape[0] == acts.manifest["total_tokens"]
    with pytest.raises(H.HarvestError, match="only pooled"):
        acts.tokens(HOOKS[0])
    tok = torch.cat([s["token_id"] for s in acts.iter_shard_tensors(HOOKS[1])])
    first = acts.documents[0]
    ids = tiny_model.tokenizer(small_records[0].text).input_ids
    assert tok[first["token_offset"]: first["token_offset"] + first["n_tokens"]].tolist() == ids
    with pytest.raises(Exception, match="not among hooks"):
        H.HarvestConfig(hooks=["blocks.0.hook_resid_post"], token_hooks=["blocks.1.hook_resid_post"]).validate()


def test_plain_model_fast_path_equals_bridge_path(tiny_model, small_records, tmp_path):
    from saekit.model import load_hf

    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]
    hf, tok = load_hf("tiny")
    fast = H.Activations.open(H.harvest(cfg(tmp_path, hooks=hooks, out=str(tmp_path / "fast")), model=hf,
                                        records=small_records, tokenizer=tok))
    slow = H.Activations.open(H.harvest(cfg(tmp_path, hooks=hooks, out=str(tmp_path / "slow")), model=tiny_model,
                                        records=small_records))
    for h in hooks:
        torch.testing.assert_close(fast.tokens(h), slow.tokens(h), atol=1e-5, rtol=1e-5)
    with pytest.raises(H.HarvestError, match="need a model from saekit.load_model"):
        H.harvest(cfg(tmp_path, hooks=["blocks.1.attn.hook_pattern"], out=str(tmp_path / "x")), model=hf,
                  records=small_records, tokenizer=tok)


def test_fast_path_stops_after_last_hooked_layer(small_records, tmp_path):
    from saekit.model import decoder_layers, load_hf

    hf, tok = load_hf("tiny")
    calls = []
    handle = decoder_layers(hf)[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        H.harvest(cfg(tmp_path, hooks=["blocks.1.hook_resid_post"]), model=hf, records=small_records, tokenizer=tok)
    finally:
        handle.remove()
    assert calls == []
