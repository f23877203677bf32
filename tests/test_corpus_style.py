"""The corpus style issue: the style statistics `saekit corpus check` computes, the balance the shipped
corpus promises (checked with those same statistics), and the PCs-against-style geometry."""

import collections
import json

import pytest
import torch
from typer.testing import CliRunner

from saekit import corpus as C
from saekit import corpus_style as S
from saekit.cli import app

runner = CliRunner()
PLANE = {"serene", "terrified", "ecstatic", "depressed"}   # the corners of the valence-arousal plane


def by_emotion(shipped_stories):
    out = collections.defaultdict(list)
    for r in shipped_stories:
        out[r.emotion].append(r)
    return out


# ---------------------------------------------------------------------------- the statistics themselves


def test_story_counts_are_exact_on_a_hand_counted_text():
    lists = S.WordLists.load()
    text = 'My heart raced. "I know you thought so," she said, and her hands shook. I remembered.'
    assert S.story_counts(text, lists) == {"words": 16, "body": 2, "quoted": 5, "cognition": 3}


def test_tokens_per_story_come_from_the_tokenizer_and_enter_the_spread_and_the_geometry(shipped_stories):
    class Chars:   # a tokenizer whose tokens are characters: counts are exact by hand
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [list(t) for t in texts]}

    counts = S.token_counts(shipped_stories, Chars())
    rep = S.style_report(shipped_stories, tokens=counts)
    afraid = [r for r in shipped_stories if r.emotion == "afraid"]
    assert rep.row("afraid").tokens == pytest.approx(sum(len(r.text) for r in afraid) / len(afraid))
    assert "tokens" in rep.inequality and rep.corpus_mean["tokens"] == pytest.approx(
        sum(len(r.text) for r in shipped_stories) / len(shipped_stories))
    emotions, vecs = planted_vectors(rep, "tokens")
    rows = S.style_geometry(vecs, emotions, rep)
    assert abs(next(r["r"] for r in rows if r["predictor"] == "PC1" and r["target"] == "tokens")) > 0.95
    assert "tokens" not in S.style_report(shipped_stories).inequality   # without counts, no token statistic


def test_word_lists_are_data_files_a_user_can_replace(tmp_path):
    mine = tmp_path / "body.txt"
    mine.write_text("# my list\nelbow\n")
    lists = S.WordLists.load(body=mine)
    assert lists.body == {"elbow"} and S.story_counts("My heart and my elbow.", lists)["body"] == 1
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(C.CorpusError, match="has no words"):
        S.WordLists.load(body=tmp_path / "empty.txt")


def test_balance_catches_an_emotion_told_through_the_body(shipped_stories):
    """The old corpus's confound, planted: one emotion's stories gain body words, so its share leaves the band."""
    skewed = [C.Record(r.id, r.text + " Her chest, her throat, her hands, her stomach.", r.emotion, r.topic, r.narration,
                       r.split, r.meta) if r.emotion == "afraid" else r for r in shipped_stories]
    problems = S.balance_problems(skewed)
    assert any(p.startswith("afraid: body_share") for p in problems), problems
    assert not any(p.startswith("calm:") for p in problems)


# ---------------------------------------------------------------------------- the shipped corpus, line by line


def test_at_least_40_emotions_spanning_the_valence_arousal_plane(shipped_stories):
    emotions = set(by_emotion(shipped_stories))
    assert len(emotions) >= 40 and PLANE <= emotions
    table = C.emotion_table()
    assert emotions <= set(table)
    signs = collections.Counter(C.valence_sign(e) for e in emotions)
    assert min(signs.values()) >= 0.4 * len(emotions), signs   # neither valence dominates


def test_at_least_36_stories_per_emotion_each_tagged_with_a_known_mode(shipped_stories):
    modes = set(S.shipped_modes())
    assert modes == {"body", "action", "dialogue", "thought", "situation"}
    for emo, recs in by_emotion(shipped_stories).items():
        assert len(recs) >= 36, emo
        assert all(S.mode_of(r) in modes for r in recs), emo


def test_modes_shares_and_narration_are_balanced_by_the_corpus_check_statistics(shipped_stories):
    """Each mode 15-30% of every emotion's stories; body-word, quoted-speech and cognition-verb shares within
    25% of the corpus mean; first and third person within one story of half."""
    assert S.balance_problems(shipped_stories) == []
    rep = S.style_report(shipped_stories)
    for stat in S.BALANCED:
        assert rep.inequality[stat]["max_rel_dev"] <= S.TOLERANCE, stat


def test_new_emotions_have_forbidden_lists_and_no_story_uses_them(shipped_stories):
    for emo in PLANE | {"compassionate", "inspired", "nostalgic", "jealous", "embarrassed", "refreshed"}:
        assert len(C.emotion_table()[emo]["forbidden"]) >= 5, emo
    assert [p for p in C.validate(shipped_stories) if "forbidden" in p] == []


def test_topics_spread_over_the_papers_list(shipped_stories):
    topics = C.paper_topics()
    used = collections.Counter(r.topic for r in shipped_stories)
    assert set(used) == set(topics)                      # every topic of the paper's list is used
    mean = len(shipped_stories) / len(topics)
    assert max(used.values()) <= 2 * mean and min(used.values()) >= mean / 2, used.most_common(3)
    for emo, recs in by_emotion(shipped_stories).items():
        assert len({r.topic for r in recs}) >= 30, emo


def test_the_test_split_is_stratified_by_emotion_mode_and_narration(shipped_stories):
    for emo, recs in by_emotion(shipped_stories).items():
        test = [r for r in recs if r.split == "test"]
        assert 0.15 <= len(test) / len(recs) <= 0.25, emo
        assert len({S.mode_of(r) for r in test}) >= 4, emo
        assert {r.narration for r in test} == {"first", "third"}, emo


def test_neutral_texts_grow_and_mention_the_body(shipped_records, shipped_stories):
    neutral = [r for r in shipped_records if r.emotion == C.NEUTRAL]
    assert len(neutral) >= 250
    body = [r for r in neutral if r.topic == "body"]
    assert len(body) >= 50
    lists = S.WordLists.load()
    counts = collections.Counter()
    for r in body:
        counts.update(S.story_counts(r.text, lists))
    assert counts["body"] / counts["words"] >= S.style_report(shipped_stories).corpus_mean["body_share"]


# ---------------------------------------------------------------------------- geometry against style


def planted_vectors(report, along: str, seed=0):
    """Vectors whose first principal component is `along` (a style statistic or the valence sign)."""
    g = torch.Generator().manual_seed(seed)
    emotions = [r.emotion for r in report.rows]
    y = torch.tensor([C.valence_sign(e) if along == "valence_sign" else report.row(e).stat(along) for e in emotions])
    y = (y - y.mean()) / y.std()
    axis = torch.randn(64, generator=g)
    return emotions, 10 * y[:, None] * axis / axis.norm() + 0.1 * torch.randn(len(emotions), 64, generator=g)


def test_style_geometry_warns_when_a_style_statistic_tracks_a_pc_and_not_when_valence_does(shipped_stories):
    rep = S.style_report(shipped_stories)
    emotions, vecs = planted_vectors(rep, "body_share")
    rows = S.style_geometry(vecs, emotions, rep)
    pc1 = {r["target"]: r for r in rows if r["predictor"] == "PC1"}
    assert abs(pc1["body_share"]["r"]) > 0.95 and pc1["body_share"]["n"] == len(emotions)
    assert any(w.startswith("PC1 tracks the style statistic body_share") for w in S.style_warnings(rows))
    emotions, vecs = planted_vectors(rep, "valence_sign")
    rows = S.style_geometry(vecs, emotions, rep)
    assert abs(next(r["r"] for r in rows if r["predictor"] == "PC1" and r["target"] == "valence_sign")) > 0.95
    assert not any(w.startswith("PC1") for w in S.style_warnings(rows))


def test_corpus_check_with_a_database_stores_the_geometry_and_warns(tmp_path, shipped_stories):
    """Vectors planted along body share, stored as a ranking would store them, on the shipped stories."""
    from saekit.db import Database, read_only_query

    rep = S.style_report(shipped_stories)
    emotions, vecs = planted_vectors(rep, "body_share")
    db = tmp_path / "s.duckdb"
    with Database(db) as d:
        d.insert("emotion_vectors", [{"model_id": "m", "corpus_id": "shipped", "hook": "blocks.1.hook_resid_post",
                                      "emotion": e, "vector": v.tolist()} for e, v in zip(emotions, vecs)])
        d.insert("stories", [{"corpus_id": "shipped", "story_id": r.id, "emotion": r.emotion, "split": r.split,
                              "text": r.text} for r in shipped_stories])
    result = runner.invoke(app, ["corpus", "check", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "warning: PC1 tracks the style statistic body_share" in " ".join(result.output.split())
    stored = read_only_query("SELECT predictor, target, r, word_lists FROM style_geometry", db).to_pylist()
    assert {(r["predictor"], r["target"]) for r in stored} >= {("PC1", "body_share"), ("PC1", "valence_sign")}
    assert "body_words.txt" in json.loads(stored[0]["word_lists"])["body"]
    with Database(db) as d:   # the database's shipped_stories are of another version of the corpus: refused
        d.sql("UPDATE stories SET text = 'changed' WHERE story_id = ?", [shipped_stories[0].id])
    cli = runner.invoke(app, ["corpus", "check", "--db", str(db)])
    assert cli.exit_code == 2 and "differ from this corpus in 1 stories" in cli.output


def test_corpus_check_prints_the_spread_of_the_shipped_corpus():
    result = runner.invoke(app, ["corpus", "check"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "body_share: corpus mean" in text and "balance (modes 15-30%, shares within 25% of the mean" in text
    assert "tokens: corpus mean" in text and "tokens: SmolLM2's tokenizer" in text
    assert "): ok" in text


@pytest.mark.parametrize("rows,args,words", [
    ([{"id": "a", "text": "one text"}, {"id": "b", "text": "two text"}], [], "no record has a label in column 'emotion'"),
    ([{"id": "a", "text": "x", "feeling": "calm"}] * 1, ["--label-column", "mood"], "no record has a label in column 'mood'"),
    ([{"id": "a", "text": "x", "emotion": "calm"}, {"id": "b", "text": "y", "emotion": "calm"},
      {"id": "c", "text": "z", "emotion": "afraid"}], [], "emotion(s) ['afraid'] have one story each"),
])
def test_corpus_check_refuses_bad_input_with_one_message(tmp_path, rows, args, words):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["corpus", "check", str(path), *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert words in " ".join(result.output.split()), result.output
