"""Story generation: parser, checks, de-duplication and splits on crafted replies, then the whole
pipeline on the tiny random model and, for real, on the embedded default model."""

import json

import pytest

from saekit import generate as G
from saekit.config import ConfigError, from_dict
from saekit.corpus import load_corpus, paper_topics

TOPIC = paper_topics()[0]


def cfg_for(tmp_path, **kw) -> G.GenerateConfig:
    base = {"emotions": ["afraid"], "topics": 1, "stories_per_call": 3, "calls_per_pair": 1,
            "max_new_tokens": 16, "out": str(tmp_path / "gen.jsonl"), "min_words": 5, "max_words": 60}
    base.update(kw)
    return from_dict(G.GenerateConfig, base)


def story(seed: int, n: int = 12, subject: str = "Mara") -> str:
    """A distinct crafted story of n words (letter-only words that depend on seed, so no two
    stories share a word 5-gram; near_duplicates reads only letters)."""
    def alpha(k):
        return "".join(chr(97 + (k // 26 ** j) % 26) for j in range(3))

    words = [alpha(1000 * seed + i) for i in range(n - 2)]
    return f"{subject} {' '.join(words)} stopped."


def reply_row(text: str, emotion: str = "afraid", topic: str = TOPIC, call: int = 0, finished: bool = True) -> dict:
    return {"emotion": emotion, "topic": topic, "call": call, "reply": text, "finished": finished}


# ---------------------------------------------------------------------------- parsing


def test_parse_numbered_drops_intro_titles_markdown_and_outro():
    reply = ("Here are three stories:\n\n1. Ana stood by the door.\nShe ran.\n\n"
             "2) **The Door**\nHe knocked twice.\n\n**Story 3:** It was 10:30 when I left.\n\n"
             "I hope you enjoyed these stories!")
    assert G.parse_stories(reply) == ["Ana stood by the door. She ran.", "He knocked twice.",
                                      "It was 10:30 when I left."]


def test_parse_story_headings_and_separators():
    reply = "Story 1: The Tattoo\nMara saw the ink.\n---\nStory 2 - Rain\nTom waited."
    assert G.parse_stories(reply) == ["Mara saw the ink.", "Tom waited."]


def test_parse_unnumbered_paragraphs_and_numbers_inside_text():
    assert G.parse_stories('Ana stood.\n\nTom waited.\n\n***\n\n"I cannot," she said.') == [
        "Ana stood.", "Tom waited.", '"I cannot," she said.']
    # "20 years" at a line start is text, not a marker
    assert G.parse_stories("1. In 1999 it rained.\n20 years later, she came back.\n2. Next.") == [
        "In 1999 it rained. 20 years later, she came back.", "Next."]
    assert G.parse_stories("   \n") == []
    # an intro that does not start with a stock phrase (seen from SmolLM2-135M)
    assert G.parse_stories("A story to inspire you? Here are two tales that might help...\n\n"
                           "In the first tale, Lena ran.\n\nThe second one:\n\nTom sat.") == [
        "In the first tale, Lena ran.", "Tom sat."]


# ---------------------------------------------------------------------------- checks


def test_check_story_reasons():
    pats = G.emotion_patterns("afraid")  # has a synonym list in emotions.json
    ok = story(1, 10)
    assert G.check_story(ok, pats, 5, 60) == (None, None)
    assert G.check_story("", pats, 5, 60)[0] == "empty"
    assert G.check_story("one two three", pats, 5, 60)[0] == "too_short"
    assert G.check_story(story(2, 80), pats, 5, 60)[0] == "too_long"
    assert G.check_story(ok + " She was Afraid.", pats, 5, 60) == ("forbidden_word", "afraid")
    assert G.check_story(ok + " Fear gripped her.", pats, 5, 60) == ("forbidden_word", "fear")
    cut = "Mara walked to the door and put her hand on the"
    assert G.check_story(cut, pats, 5, 60, cut_off=True)[0] == "truncated"
    assert G.check_story(cut + " latch.", pats, 5, 60, cut_off=True) == (None, None)


def test_fallback_patterns_for_emotions_without_synonym_list():
    from saekit.corpus import emotion_table

    assert not {"exasperated", "mad", "on edge"} & set(emotion_table())
    assert {"exasperated", "mad", "on edge"} <= set(G.all_emotions())
    pats = G.emotion_patterns("exasperated")
    def hit(text):
        return any(p.search(text) for p in pats)

    assert hit("Her exasperation grew") and hit("EXASPERATED again") and hit("so exasperating")
    assert not hit("She slammed the drawer shut")
    mad = G.emotion_patterns("mad")
    assert any(p.search("he got madder, madly") for p in mad)
    assert not any(p.search("she made tea") for p in mad)  # short words get no \w* stem
    edge = G.emotion_patterns("on edge")
    assert any(p.search("She was on  edge all day") for p in edge)
    assert not any(p.search("the edge of the table") for p in edge)


def test_narration_ignores_dialogue():
    assert G.narration("I walked home. My hands shook and I sat down.") == "first"
    assert G.narration('She walked home. "I am fine, I said I am fine," she told him.') == "third"
    assert G.narration("Rain fell on the town.") == "third"


# ---------------------------------------------------------------------------- assembly


def test_assemble_counts_every_candidate_and_dedups(tmp_path):
    cfg = cfg_for(tmp_path)
    a, b = story(1), story(2, subject="I saw that")
    near = a.replace("stopped.", "halted.")  # same first words: a near duplicate of a
    replies = [
        reply_row(f"1. {a}\n2. {b}\n3. {a.upper()}"),                        # kept, kept, exact dup
        reply_row(f"1. {near}\n2. She was terrified.\n3. tiny", call=1),    # near dup, forbidden, short
        reply_row("", call=2),                                               # nothing parseable
        reply_row(f"1. {story(3)}\n2. {story(4)} and then the", call=3, finished=False),  # kept, cut off
    ]
    records, report = G.assemble(replies, cfg)
    assert [r.text for r in records] == [a, b, story(3)]
    assert report["candidates"] == 9 == report["accepted"] + report["rejected_total"]
    assert report["rejected"] == {"empty": 1, "too_short": 1, "truncated": 1, "forbidden_word": 1,
                                  "duplicate": 1, "near_duplicate": 1}
    assert report["forbidden_words"] == {"terrified": 1}
    assert [r.id for r in records] == ["afraid-g000-01", "afraid-g000-02", "afraid-g000-03"]
    assert [r.narration for r in records] == ["third", "first", "third"]
    assert all(r.topic == TOPIC and r.emotion == "afraid" for r in records)


def test_splits_are_stratified_seeded_and_about_one_fifth():
    from saekit.corpus import Record

    recs = [Record(id=f"{e}-{i:02d}", text="x", emotion=e) for e in ("calm", "afraid") for i in range(10)]
    recs.append(Record(id="lonely-00", text="x", emotion="lonely"))
    split = G.split_by_emotion(recs, 0.2, seed=0)
    for emo in ("calm", "afraid"):
        assert sum(r.split == "test" for r in split if r.emotion == emo) == 2
    assert [r.split for r in split if r.emotion == "lonely"] == ["train"]
    assert [r.split for r in G.split_by_emotion(recs, 0.2, seed=0)] == [r.split for r in split]
    assert [r.split for r in G.split_by_emotion(recs, 0.2, seed=1)] != [r.split for r in split]
    two = [Record(id=f"a{i}", text="x", emotion="sad") for i in range(2)]
    assert sorted(r.split for r in G.split_by_emotion(two, 0.2, 0)) == ["test", "train"]


def test_config_validation_and_lists(tmp_path):
    assert len(G.GenerateConfig().emotion_list()) == 171
    assert G.GenerateConfig(topics=3).topic_list() == paper_topics()[:3]
    assert len(G.plan_jobs(G.GenerateConfig(emotions=["sad", "calm"], topics=2, calls_per_pair=3))) == 12
    for bad in ({"emotions": "some"}, {"topics": 0}, {"min_words": 50, "max_words": 10}, {"temperature": 0},
                {"stories_per_call": 0}, {"unknown": 1}):
        with pytest.raises(ConfigError):
            cfg_for(tmp_path, **bad)


def test_prompt_names_emotion_topic_count_and_person():
    p = G.build_prompt("afraid", TOPIC, 3, "first")
    assert "feels afraid" in p and TOPIC in p and "1., 2., 3." in p and "first person" in p
    assert G.job_person(G.Job("a", "t", 0)) == "third" and G.job_person(G.Job("a", "t", 1)) == "first"


# ---------------------------------------------------------------------------- with models



def _check_outputs(cfg: G.GenerateConfig, report: dict) -> list[dict]:
    out, replies, report_path = G.output_paths(cfg.out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert json.loads(report_path.read_text()) == json.loads(json.dumps(report, default=str))
    assert len(rows) == report["accepted"]
    assert report["candidates"] == report["accepted"] + report["rejected_total"] >= report["calls"]
    assert report["calls"] == len(replies.read_text().splitlines()) == len(G.plan_jobs(cfg))
    for row in rows:
        assert set(row) == {"id", "emotion", "topic", "narration", "text", "split"}
        assert row["emotion"] in cfg.emotion_list() and row["topic"] in cfg.topic_list()
        assert row["narration"] in ("first", "third") and row["split"] in ("train", "test")
        assert cfg.min_words <= len(row["text"].split()) <= cfg.max_words
    if rows:
        loaded = load_corpus(out)
        assert [r.id for r in loaded] == [row["id"] for row in rows]
    return rows


def test_tiny_model_pipeline_writes_well_formed_files_and_resumes(tmp_path, tiny_model, one_thread):
    cfg = cfg_for(tmp_path, stories_per_call=2, max_new_tokens=24)
    calls = []
    report = G.generate_corpus(cfg, model=tiny_model, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (1, 1)
    _check_outputs(cfg, report)
    assert report["calls_resumed"] == 0
    # A random model rarely writes a valid story; every rejection is counted.
    assert report["rejected_total"] >= 1 or report["accepted"] >= 1
    # Lax limits on the same replies (resumed: no model is touched) accept the random text.
    lax = cfg_for(tmp_path, stories_per_call=2, max_new_tokens=24, min_words=1, max_words=1000,
                  drop_truncated=False)
    before = G.output_paths(cfg.out)[1].read_text()
    lax_report = G.generate_corpus(lax, model=object())
    assert G.output_paths(cfg.out)[1].read_text() == before and lax_report["calls_resumed"] == 1
    rows = _check_outputs(lax, lax_report)
    assert rows and rows[0]["id"] == "afraid-g000-01"
    # Replies from another sampling config are refused, not mixed in.
    with pytest.raises(G.GenerateError, match="another config"):
        G.generate_corpus(cfg_for(tmp_path, stories_per_call=2, max_new_tokens=24, seed=1), model=tiny_model)


def test_tiny_model_sampling_is_seeded(tmp_path, tiny_model, one_thread):
    cfg = cfg_for(tmp_path, max_new_tokens=12)
    tok = tiny_model.tokenizer
    prompts = [G.build_prompt("afraid", TOPIC, 2), G.build_prompt("calm", TOPIC, 2)]
    first = G.sample_replies(tiny_model, tok, prompts, cfg, seed=5)
    assert first == G.sample_replies(tiny_model, tok, prompts, cfg, seed=5)
    assert first != G.sample_replies(tiny_model, tok, prompts, cfg, seed=6)
    assert all(isinstance(t, str) and f is False for t, f in first)  # 12 tokens never reach EOS here


@pytest.mark.slow
def test_embedded_model_end_to_end(tmp_path, one_thread):
    cfg = cfg_for(tmp_path, model="smollm2-135m-instruct", emotions=["afraid", "grateful"], topics=1,
                  stories_per_call=2, max_new_tokens=32, min_words=3, batch_size=2)
    report = G.generate_corpus(cfg)
    rows = _check_outputs(cfg, report)
    assert report["calls"] == 2 and report["config"]["model"] == "smollm2-135m-instruct"
    replies = [json.loads(line) for line in G.output_paths(cfg.out)[1].read_text().splitlines()]
    assert all(r["reply"].strip() for r in replies)  # the instruct model answers in text
    # 32 tokens cannot hold two stories: the cut-off last story of each reply is rejected unless it ended.
    cut = sum(1 for r in replies if not r["finished"])
    assert report["calls_cut_off"] == cut and report["rejected"].get("truncated", 0) <= cut
    for row in rows:  # no kept story names its emotion
        assert not any(p.search(row["text"]) for p in G.emotion_patterns(row["emotion"]))
    print(json.dumps({"replies": [r["reply"] for r in replies], "report": {
        k: report[k] for k in ("accepted", "rejected", "forbidden_words")}}, indent=1))
