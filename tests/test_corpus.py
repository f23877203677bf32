"""The shipped corpus and scenario sets: every number the corpus issue promises is enforced here."""

import collections
import re

import pytest

from saekit import corpus as C

REQUIRED = ("desperate calm afraid nervous loving grateful grief-stricken sad lonely guilty ashamed joyful "
            "excited proud amused content bored suspicious angry frustrated disgusted hopeful relieved surprised").split()
CLUSTERS = {"exuberant joy", "peaceful contentment", "compassionate gratitude", "competitive pride",
            "playful amusement", "depleted disengagement", "vigilant suspicion", "hostile anger",
            "fear and overwhelm", "despair and shame"}


def test_emotions_cover_required_list_and_all_ten_clusters(shipped_stories):
    table = C.emotion_table()
    emotions = {r.emotion for r in shipped_stories}
    paper = set(C.corpus_root().joinpath("emotions.txt").read_text().split("\n"))
    assert len(emotions) >= 30
    assert set(REQUIRED) <= emotions
    assert emotions <= paper, emotions - paper
    assert {table[e]["cluster"] for e in emotions} == CLUSTERS


def test_each_emotion_has_24_stories_over_12_topics_and_both_narrations(shipped_stories):
    by = collections.defaultdict(list)
    for r in shipped_stories:
        by[r.emotion].append(r)
    topics = set(C.paper_topics())
    for emo, recs in by.items():
        assert len(recs) >= 24, emo
        assert len({r.topic for r in recs}) >= 12, emo
        assert {r.topic for r in recs} <= topics, emo
        narr = collections.Counter(r.narration for r in recs)
        assert narr["first"] >= 6 and narr["third"] >= 6, (emo, narr)


def test_stories_are_one_paragraph_of_60_to_150_words(shipped_stories):
    for r in shipped_stories:
        assert 60 <= C.word_count(r.text) <= 150, r.id
        assert "\n" not in r.text, r.id


def test_no_story_uses_its_emotion_word_or_synonyms(shipped_stories):
    for r in shipped_stories:
        for pat in C.forbidden_patterns(r.emotion):
            assert not pat.search(r.text), (r.id, pat.pattern)


def test_every_emotion_has_a_synonym_list_that_catches_its_word():
    for emo, info in C.emotion_table().items():
        assert len(info["forbidden"]) >= 3, emo
        pats = C.forbidden_patterns(emo)
        assert any(p.search(f"She was {emo} all day.") for p in pats), emo
    # the checker really catches inflected synonyms
    assert any(p.search("a wave of Terror") for p in C.forbidden_patterns("afraid"))
    assert not any(p.search("he won't go") for p in C.forbidden_patterns("triumphant"))


def test_no_duplicates_or_near_duplicates(shipped_records):
    assert len({r.id for r in shipped_records}) == len(shipped_records)
    assert len({r.text for r in shipped_records}) == len(shipped_records)
    assert C.near_duplicates(shipped_records) == []


def test_near_duplicate_checker_finds_a_copied_story(shipped_stories):
    a = shipped_stories[0]
    words = a.text.split()
    copy = C.Record(id="copy", text=" ".join(words[:-3] + ["and", "then", "left."]), emotion=a.emotion)
    assert ("copy" in {x for pair in C.near_duplicates([a, copy]) for x in pair[:2]})


def test_neutral_texts(shipped_records):
    neutral = [r for r in shipped_records if r.emotion == C.NEUTRAL]
    assert len(neutral) >= 150
    dialogues = [r for r in neutral if r.narration == "dialogue"]
    assert len(dialogues) >= 100 and len(neutral) - len(dialogues) >= 40
    assert {r.topic for r in dialogues} == {"code", "facts", "how-to", "work"}
    for r in dialogues:
        assert r.text.startswith("User: ") and "\nAssistant: " in r.text, r.id
    feelings = re.compile(r"\b(happy|sad|glad|sorry|worried|excited|love|hate|afraid|thanks?|unfortunately)\b|!", re.I)
    assert [r.id for r in neutral if feelings.search(r.text)] == []


def test_split_is_stored_stratified_and_about_80_20(shipped_records):
    assert {r.split for r in shipped_records} == {"train", "test"}
    by = collections.defaultdict(collections.Counter)
    for r in shipped_records:
        by[r.emotion][r.split] += 1
    for emo, c in by.items():
        frac = c["test"] / (c["test"] + c["train"])
        assert 0.12 <= frac <= 0.28, (emo, c)
    # the stored split is exactly what the deterministic splitter gives
    assert [r.split for r in C.assign_splits(shipped_records)] == [r.split for r in shipped_records]


def test_validate_reports_nothing_on_shipped_corpus_and_catches_bad_records(shipped_records):
    assert C.validate(shipped_records) == []
    bad = C.Record(id="bad-1", text="She was so sad. " * 3, emotion="sad", topic="not a topic", narration="second")
    problems = "\n".join(C.validate(shipped_records + [bad]))
    assert "bad-1: 12 words" in problems and "forbidden word 'sad'" in problems
    assert "not one of the paper's topics" in problems and "narration" in problems


def test_load_filters_split_and_emotions(shipped_records):
    test = C.load_corpus(split="test", emotions=["calm", "afraid"], include_neutral=False)
    assert {r.emotion for r in test} == {"calm", "afraid"} and {r.split for r in test} == {"test"}
    with pytest.raises(C.CorpusError, match="not in the corpus"):
        C.load_corpus(emotions=["calm", "zzz"])


def test_live_dialogue_scenarios():
    rows = C.load_scenario("live_dialogue")
    counts = collections.Counter(r["user_emotion"] for r in rows)
    assert set(counts) == {"sad", "frightened", "angry", "joyful", "grateful"}
    assert min(counts.values()) >= 10
    emotions = set(C.emotion_table())
    for r in rows:
        assert r["expected_reply_emotion"] in emotions and r["text"].strip()


def test_implicit_scenarios_do_not_name_their_emotion():
    rows = C.load_scenario("implicit")
    assert len(rows) >= 12
    for r in rows:
        for pat in C.forbidden_patterns(r["emotion"]):
            assert not pat.search(r["text"]), (r["id"], pat.pattern)


def test_dose_response_scenarios():
    d = C.load_scenario("dose_response")
    assert len(d["drugs"]) >= 3
    for drug in d["drugs"]:
        doses = drug["doses_mg"]
        assert doses == sorted(doses) and doses[0] <= drug["single_dose_mg"] < drug["safe_limit_mg"] < doses[-1]
        text = d["template"].format(dose=doses[0], drug=drug["drug"], reason=drug["reason"])
        assert str(doses[0]) in text and drug["drug"] in text


def test_impossible_task_conversations():
    d = C.load_scenario("impossible_task")
    convs = d["conversations"]
    assert len(convs) >= 3 and len({c["id"] for c in convs}) == len(convs)
    for c in convs:
        roles = [t["role"] for t in c["turns"]]
        assert roles[0] == "user" and all(a != b for a, b in zip(roles, roles[1:]))
        assert len(c["steps"]) >= 6
        for s in c["steps"]:
            assert c["turns"][s["after_turn"]]["role"] == "user"
            assert re.search(r"(FAILED|Error|assert)", c["turns"][s["after_turn"]]["content"])
            assert s["honest"].strip() and s["cheating"].strip() and s["honest"] != s["cheating"]
        assert [s["attempt"] for s in c["steps"]] == list(range(1, len(c["steps"]) + 1))


def test_emotion_word_probes():
    d = C.load_scenario("probes")
    assert len(d["probes"]) >= 8
    assert all(p["text"].endswith("feels") for p in d["probes"])


def test_unknown_scenario_lists_shipped_ones():
    with pytest.raises(C.CorpusError, match="impossible_task"):
        C.load_scenario("nope")
