"""Feature evidence on counted tokens: an attention-sink outlier changes nothing, examples match."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit import evidence as Ev
from saekit.artifacts import MANIFEST, file_sha256
from saekit.harvest import Activations, HarvestConfig, harvest
from saekit.sae import build_training_sae
from saekit.tokens import TokenRule, TokenRuleError

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def acts_and_sae(tiny_model, tmp_path_factory):
    from saekit.corpus import load_corpus

    tmp = tmp_path_factory.mktemp("evidence")
    records = [r for r in load_corpus(emotions=["calm", "afraid"]) if r.emotion != "neutral"][:24]
    folder = harvest(HarvestConfig(model="tiny", hooks=[HOOK], out=str(tmp / "acts"), max_tokens=64,
                                   batch_size=8, docs_per_shard=10), model=tiny_model, records=records)
    torch.manual_seed(0)
    sae = build_training_sae("topk", 64, 96, k=8, metadata={"hook_name": HOOK, "model_name": "tiny"})
    with torch.no_grad():   # a non-zero encoder bias so that even a zero vector activates features
        sae.b_enc.normal_()
    return Activations.open(folder), sae, tmp


def _with_sink(acts: Activations, tmp, scale: float = 1e4) -> Activations:
    """A copy of the harvest whose first position of every text is a huge attention-sink vector."""
    import shutil

    out = tmp / f"sink-{scale:g}"
    if not out.exists():
        shutil.copytree(acts.path, out)
        manifest = json.loads((out / MANIFEST).read_text())
        for entry in manifest["shards"].values():
            t = load_file(str(out / entry["file"]))
            first = t["position"] == 0
            t[HOOK][first] = scale * torch.linspace(-1, 1, t[HOOK].shape[1])
            save_file(t, str(out / entry["file"]))
            entry["bytes"], entry["sha256"] = (out / entry["file"]).stat().st_size, file_sha256(out / entry["file"])
        (out / MANIFEST).write_text(json.dumps(manifest))
    return Activations.open(out)


def _evidence(acts, sae, rule=TokenRule()):
    enc = Ev.encode_documents(acts, HOOK, sae.encode, sae.cfg.d_sae, rule)
    examples = Ev.top_examples(enc, acts, HOOK, sae.encode, rule, None, n=3)
    return enc, examples


def test_examples_read_the_kept_latents_and_match_a_second_encoding(acts_and_sae):
    acts, sae, _ = acts_and_sae
    rule = TokenRule()
    enc = Ev.encode_documents(acts, HOOK, sae.encode, sae.cfg.d_sae, rule)
    assert len(enc.codes) == len(acts.documents) - len(enc.skipped)
    calls = []

    def counting(x):
        calls.append(len(x))
        return sae.encode(x)

    kept = Ev.top_examples(enc, acts, HOOK, counting, rule, None, n=3)
    assert kept and not calls                                  # no story was encoded again
    enc.codes.clear()
    again = Ev.top_examples(enc, acts, HOOK, counting, rule, None, n=3)
    assert calls and len(again) == len(kept)
    for a, b in zip(kept, again):
        assert {k: v for k, v in a.items() if k != "token_activations"} == \
            {k: v for k, v in b.items() if k != "token_activations"}
        assert a["token_activations"] == pytest.approx(b["token_activations"], rel=1e-4, abs=1e-5)
    ids = [d["id"] for d in acts.documents]
    for a in (r for r in kept if r["kind"] == "window"):      # the window holds the story's peak, as encoded
        assert max(a["token_activations"]) == float(enc.max_NF[ids.index(a["story_id"]), a["feature"]])


def test_huge_first_position_changes_no_statistic_or_example(acts_and_sae):
    acts, sae, tmp = acts_and_sae
    sunk = _with_sink(acts, tmp)
    a, ex_a = _evidence(acts, sae)
    b, ex_b = _evidence(sunk, sae)
    for name in ("mean_NF", "max_NF", "argmax_NF", "fire_F", "sum_F", "peak_F", "hist_FB"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.n_tokens == b.n_tokens and a.n_dropped_first == len(acts.documents)
    assert ex_a == ex_b and ex_a
    # the old behaviour (every position counts) is visibly dominated by the sink
    c = Ev.encode_documents(sunk, HOOK, sae.encode, sae.cfg.d_sae, TokenRule(skip_first=0))
    assert not torch.equal(a.peak_F, c.peak_F)


def test_norm_filter_drops_outliers_and_reports_how_many(acts_and_sae):
    acts, sae, tmp = acts_and_sae
    sunk = _with_sink(acts, tmp)
    x = torch.cat([s["acts"] for s in sunk.iter_shard_tensors(HOOK)])
    pos = torch.cat([s["position"] for s in sunk.iter_shard_tensors(HOOK)])
    rule = TokenRule(skip_first=0, max_norm_ratio=20.0).with_reference(x, pos)
    enc = Ev.encode_documents(sunk, HOOK, sae.encode, sae.cfg.d_sae, rule)
    plain = Ev.encode_documents(acts, HOOK, sae.encode, sae.cfg.d_sae, TokenRule())
    assert enc.n_dropped_norm == len(acts.documents) and enc.n_dropped_first == 0
    assert torch.equal(enc.peak_F, plain.peak_F)
    assert "20 x median" in rule.describe()
    with pytest.raises(TokenRuleError, match="reference"):
        TokenRule(max_norm_ratio=20.0).keep(pos, x)


def test_example_windows_lie_in_counted_tokens_and_store_a_fresh_encode(acts_and_sae):
    acts, sae, _ = acts_and_sae
    enc, examples = _evidence(acts, sae)
    docs = {d["id"]: d for d in acts.documents}
    shards = list(acts.iter_shard_tensors(HOOK))
    x = torch.cat([s["acts"] for s in shards])
    kinds = {e["kind"] for e in examples}
    assert kinds == {"story", "window"}
    for e in examples[:60]:
        doc = docs[e["story_id"]]
        assert 1 <= e["token_start"] < e["token_end"] <= doc["n_tokens"]
        window = x[doc["token_offset"] + e["token_start"]: doc["token_offset"] + e["token_end"]].float()
        fresh = sae.encode(window)[:, e["feature"]]
        assert e["token_activations"] == pytest.approx(fresh.tolist(), rel=1e-5, abs=1e-6)
        if e["kind"] == "window":
            assert max(e["token_activations"]) == pytest.approx(e["activation"], rel=1e-5)


def test_story_examples_rank_by_the_pooled_statistic(acts_and_sae):
    acts, sae, _ = acts_and_sae
    enc, examples = _evidence(acts, sae)
    ids = [d["id"] for d in acts.documents]
    f = examples[0]["feature"]
    stories = [e for e in examples if e["feature"] == f and e["kind"] == "story"]
    expected = enc.mean_NF[:, f].topk(len(stories)).indices.tolist()
    assert [ids.index(e["story_id"]) for e in stories] == expected
    labels = [d["label"] for d in acts.documents]
    prec = Ev.story_precision(enc, labels, ["afraid", "calm"], n=3)
    top3 = [labels[i] for i in enc.mean_NF[:, f].topk(3).indices.tolist()]
    assert prec[0, f] == pytest.approx(top3.count("afraid") / 3)
    assert torch.allclose(prec.sum(0), torch.ones(prec.shape[1]))


def test_text_without_counted_tokens_is_reported_not_nan(acts_and_sae):
    acts, sae, _ = acts_and_sae
    n_short = min(d["n_tokens"] for d in acts.documents)
    enc = Ev.encode_documents(acts, HOOK, sae.encode, sae.cfg.d_sae, TokenRule(skip_first=n_short))
    assert enc.skipped and all("no counted tokens" in why for why in enc.skipped.values())
    assert torch.isfinite(enc.mean_NF).all()
    examples = Ev.top_examples(enc, acts, HOOK, sae.encode, TokenRule(skip_first=n_short), None, n=3)
    skipped_ids = {acts.documents[d]["id"] for d in enc.skipped}
    assert not any(e["story_id"] in skipped_ids for e in examples)


def test_histogram_counts_every_active_counted_token(acts_and_sae):
    acts, sae, _ = acts_and_sae
    enc, _ = _evidence(acts, sae)
    assert torch.equal(enc.hist_FB.sum(1), enc.fire_F.long())
    edges = Ev.hist_edges()
    assert len(edges) == enc.hist_FB.shape[1] and edges[-1] == float("inf")


def test_word_forms_match_whole_words_not_lookalikes():
    forms = Ev.word_forms("desperate")
    assert {"desperate", "desperately", "desperation"} <= forms
    assert Ev.token_matches(" Desperate", forms) and Ev.token_matches(" desper", forms)
    assert not Ev.token_matches(" des", forms) and not Ev.token_matches(",", forms)
    happy = Ev.word_forms("happy")
    assert Ev.token_matches("happiness", happy) and not Ev.token_matches(" happen", happy)


def test_own_word_check_finds_a_planted_word_and_random_rarely_does():
    class Tok:
        words = ["calm", "afraid", "the", ",", "and", "dog"] + [f"x{i}" for i in range(194)]

        def decode(self, ids):
            return self.words[ids[0]]

    torch.manual_seed(0)
    W_U = torch.randn(200, 16)
    vectors = torch.stack([W_U[0] * 3, -W_U[1]])          # calm promotes "calm"; afraid suppresses "afraid"
    out = Ev.own_word_check(vectors, ["calm", "afraid"], W_U, None, Tok(), top=5, n_random=100)
    calm, afraid = out["per_emotion"]
    assert calm["own_word_rank"] == 1 and calm["own_word_in_top"]
    assert not afraid["own_word_in_top"] and afraid["own_word_rank"] == 200
    assert out["hits"] == 1 and 0 < calm["random_rate"] < 0.2


def test_own_word_check_counts_the_forms_of_the_real_vocabulary_as_the_rule_says():
    """Over the embedded tokenizer's 49k tokens: the fast set lookup finds exactly the tokens the written rule does."""
    import re

    from saekit.corpus import load_corpus
    from saekit.model import load_tokenizer

    def rule(text: str, forms: set[str]) -> bool:   # the rule as its docstring states it, token by token
        t = text.strip().lower()
        return bool(re.fullmatch(r"[a-z]+", t)) and (t in forms or (len(t) >= 5 and any(f.startswith(t) for f in forms)))

    tok = load_tokenizer("smollm2-135m-instruct")
    emotions = sorted({r.emotion for r in load_corpus("shipped")})
    vocab = [tok.decode([t]) for t in range(len(tok))]
    torch.manual_seed(0)
    out = Ev.own_word_check(torch.randn(len(emotions), 8), emotions, torch.randn(len(tok), 8), None, tok, n_random=2)
    for e, row in zip(emotions, out["per_emotion"]):
        forms = Ev.word_forms(e)
        expected = [i for i, t in enumerate(vocab) if rule(t, forms)]
        assert row["n_forms_in_vocab"] == len(expected), e
        assert (row["best_token"] is None) == (not expected), e
    assert sum(r["n_forms_in_vocab"] for r in out["per_emotion"]) > len(emotions)   # the words are in the vocabulary


def test_the_decoded_vocabulary_is_decoded_once_and_equals_token_by_token_decoding():
    class Tok:
        calls = 0

        def decode(self, ids):
            Tok.calls += 1
            return f"<{ids[0]}>"

    tok = Tok()
    assert Ev.decode_tokens(tok, [3, 1, 3]) == ["<3>", "<1>", "<3>"]
    assert Ev.decoded_vocab(tok, 6) == [f"<{i}>" for i in range(6)]    # grows to the ids asked for
    calls = Tok.calls
    assert Ev.decode_tokens(tok, [5, 0]) == ["<5>", "<0>"] and Tok.calls == calls
    assert Ev.decoded_vocab(Tok(), 2) == ["<0>", "<1>"] and Tok.calls == calls + 2   # another tokenizer: its own


def test_logit_lens_values_are_the_direct_logits():
    torch.manual_seed(1)
    W_U, dirs, norm = torch.randn(50, 8), torch.randn(3, 8), torch.rand(8) + 0.5
    lens = Ev.logit_lens(dirs, W_U, norm, n=4)
    full = dirs @ (W_U * norm).T
    assert lens.promoted_ids[0] == full[0].topk(4).indices.tolist()
    assert lens.promoted_logits[2] == pytest.approx(full[2].topk(4).values.tolist(), rel=1e-5)
    assert lens.suppressed_logits[1][0] == pytest.approx(float(full[1].min()), rel=1e-5)


def test_a_bad_token_rule_is_refused_before_any_compute():
    from typer.testing import CliRunner

    from saekit.cli import app

    result = CliRunner().invoke(app, ["rank", "--skip-first", "-1", "--activations", "nowhere"])
    assert result.exit_code == 2 and "skip_first must be a whole number >= 0" in result.output
    with pytest.raises(TokenRuleError, match="multiple above 1"):
        TokenRule(max_norm_ratio=0.5)
