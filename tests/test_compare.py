"""saekit compare: its statistics on hand cases, and whole comparisons on a tiny ranked database."""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr
from typer.testing import CliRunner

from saekit import compare as C
from saekit import features as Fe
from saekit.cli import app
from saekit.db import Database
from saekit.db import compare as Q

EMOTIONS = ["afraid", "angry", "calm", "joyful", "sad", "surprised"]
HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]


# ---------------------------------------------------------------------------- hand cases


def test_adjusted_rand_hand_cases():
    assert C.adjusted_rand([0, 0, 1, 1, 2], [5, 5, 3, 3, 9]) == 1.0          # the same partition, other names
    # [[1, 1], [1, 1]]: sum C(n_ij, 2) = 0, expected (2 * 2) / C(4, 2) = 2/3, max 2 -> (0 - 2/3) / (2 - 2/3)
    assert C.adjusted_rand([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    # [[2, 1, 0], [0, 1, 2]]: index 2, rows 6, cols 3, pairs 15 -> (2 - 18/15) / (4.5 - 18/15)
    assert C.adjusted_rand([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(0.8 / 3.3)
    assert C.adjusted_rand([0, 0, 0], [1, 1, 1]) == 1.0
    with pytest.raises(C.CompareError):
        C.adjusted_rand([0, 1], [0, 1, 2])


def test_tfidf_hand_case():
    train, other, vocab = C.tfidf(["A a b.", "b c"], ["a d"])
    assert vocab == ["a", "b", "c"]
    ia = np.log(3 / 2) + 1                                          # df(a) = 1 of 2 documents; df(b) = 2 -> idf 1
    row = np.array([2 * ia, 1.0, 0.0])
    np.testing.assert_allclose(train.toarray()[0], row / np.linalg.norm(row))
    np.testing.assert_allclose(train.toarray()[1], np.array([0, 1, ia]) / np.hypot(1, ia))
    np.testing.assert_allclose(other.toarray(), [[1.0, 0.0, 0.0]])   # an unseen word ("d") is not counted


def _random_similarity(gen, E=8):
    x = gen.standard_normal((E, 5))
    return Fe.cosine_matrix(torch.tensor(x), torch.tensor(x)).double().numpy()


def test_rsa_is_spearman_of_the_upper_triangles_and_identical_matrices_score_one():
    gen = np.random.default_rng(1)
    a, b = _random_similarity(gen), _random_similarity(gen)
    iu = np.triu_indices(8, 1)
    got = C.rsa(a, b, n_permutations=200)
    assert got["rho"] == pytest.approx(spearmanr(a[iu], b[iu]).statistic)
    same = C.rsa(a, a, n_permutations=2000)
    assert same["rho"] == pytest.approx(1.0) and same["p_value"] < 0.005


def test_a_permuted_side_lowers_rsa_and_its_p_value_rises():
    gen = np.random.default_rng(2)
    a = _random_similarity(gen, E=10)
    perm = gen.permutation(10)
    shuffled = a[np.ix_(perm, perm)]
    same, moved = C.rsa(a, a, n_permutations=1000), C.rsa(a, shuffled, n_permutations=1000)
    assert moved["rho"] < same["rho"]
    assert moved["p_value"] > same["p_value"]
    # undoing the shuffle restores it: the test is about emotion labels, not the values
    assert C.rsa(a, shuffled[np.ix_(np.argsort(perm), np.argsort(perm))], 0)["rho"] == pytest.approx(1.0)


def test_rsa_p_values_are_calibrated_under_the_null():
    gen = np.random.default_rng(3)
    p = [C.rsa(_random_similarity(gen), _random_similarity(gen), n_permutations=199, seed=i)["p_value"]
         for i in range(200)]
    assert 0.01 <= np.mean(np.array(p) < 0.05) <= 0.12     # about 5% of independent pairs reach 0.05
    assert 0.35 <= np.mean(p) <= 0.65                        # and the p-values are spread evenly


def test_partial_rsa_is_the_correlation_of_rank_residuals():
    gen = np.random.default_rng(4)
    c = _random_similarity(gen)
    a, b = c + 0.5 * _random_similarity(gen), c + 0.5 * _random_similarity(gen)
    iu = np.triu_indices(8, 1)
    ra, rb, rc = (rankdata(m[iu]) for m in (a, b, c))

    def resid(y):
        X = np.column_stack([np.ones_like(rc), rc])
        return y - X @ np.linalg.lstsq(X, y, rcond=None)[0]

    got = C.rsa(a, b, n_permutations=0, control_EE=c)
    assert got["partial_rho"] == pytest.approx(np.corrcoef(resid(ra), resid(rb))[0, 1])
    assert got["partial_rho"] < got["rho"]           # the shared part came from the control
    assert got["p_value"] is None


def test_bad_sides_name_what_the_database_has():
    vec = [("m", HOOKS[0], "shipped"), ("m", HOOKS[1], "shipped"), ("n", HOOKS[0], "other")]
    saes = [("my-sae", "m", HOOKS[0], "shipped"), ("empty-sae", "m", HOOKS[0], None)]
    with pytest.raises(C.CompareError, match=r"no emotion vectors of model 'x'.*m@blocks\.1.*SAEs.*my-sae"):
        C.resolve_side("x@blocks.1.hook_resid_post", vec, saes)
    with pytest.raises(C.CompareError, match=r"no emotion vectors at 'blocks\.9.*blocks\.3\.hook_resid_post"):
        C.resolve_side("m@blocks.9.hook_resid_post", vec, saes)
    with pytest.raises(C.CompareError, match="neither MODEL@HOOK nor a known sae_id"):
        C.resolve_side("nothing", vec, saes)
    with pytest.raises(C.CompareError, match="empty-sae.*no feature statistics"):
        C.resolve_side("empty-sae", vec, saes)
    assert C.resolve_side("m@3", vec, saes).hook == HOOKS[1]
    assert C.resolve_side("my-sae", vec, saes).kind == "sae"
    a, n = C.resolve_side("m@1", vec, saes), C.resolve_side("n@1", vec, saes)
    with pytest.raises(C.CompareError, match=r"different corpora.*'m@1' on \['shipped'\].*'n@1' on \['other'\]"):
        C.choose_corpus(a, n, None)
    with pytest.raises(C.CompareError, match=r"'n@1' has no results on corpus 'shipped'"):
        C.choose_corpus(a, n, "shipped")
    with pytest.raises(C.CompareError, match=r"share 2 emotions"):
        C.shared_emotions({"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 1, "neutral": 1}, ("A", "B"))


# ---------------------------------------------------------------------------- on a ranked database


@pytest.fixture(scope="module")
def ranked(tiny_model, tmp_path_factory):
    """Six emotions of the shipped corpus (8 train and 3 test stories each, 2 neutral texts per split) harvested at
    two hooks of the tiny model, ranked with an untrained SAE at the first (no logit lens: not compared)."""
    from saekit.corpus import load_corpus
    from saekit.harvest import HarvestConfig, harvest
    from saekit.rank import RankConfig, run_rank
    from saekit.sae import build_training_sae, load_sae, save_sae

    tmp = tmp_path_factory.mktemp("compare")
    records, seen = [], collections.Counter()
    for r in load_corpus(emotions=EMOTIONS):
        seen[r.emotion, r.split] += 1
        if seen[r.emotion, r.split] <= (2 if r.emotion == "neutral" else {"train": 8, "test": 3}[r.split]):
            records.append(r)
    acts = harvest(HarvestConfig(model="tiny", hooks=HOOKS, out=str(tmp / "acts"), max_tokens=48, batch_size=32),
                   model=tiny_model, records=records)
    torch.manual_seed(0)
    built = build_training_sae("topk", 64, 128, k=8, metadata={"hook_name": HOOKS[0], "model_name": "tiny"})
    folder = save_sae(built, tmp / "sae")
    cfg = RankConfig(activations=str(acts), sae=str(folder), db=str(tmp / "f.duckdb"), kmeans_k=3)
    with Database(cfg.db) as db:
        run_rank(cfg, sae=load_sae(folder).sae, db=db)
    return {"db": cfg.db, "sae": str(folder), "tmp": tmp}


def test_identical_sides_agree_fully(ranked):
    c = C.compare(ranked["db"], f"tiny@{HOOKS[0]}", "tiny@1", n_permutations=300, record=False)
    assert c.emotions == EMOTIONS and c.k == 3
    assert c.pairs["a~b"]["rsa"] == pytest.approx(1.0) and c.pairs["a~b"]["ari"] == 1.0
    assert c.pairs["a~baseline"] == c.pairs["b~baseline"]
    assert any("same" in n for n in c.notes)


def test_two_hooks_reuse_the_rankings_geometry_and_probes(ranked):
    c = C.compare(ranked["db"], f"tiny@{HOOKS[0]}", f"tiny@{HOOKS[1]}", n_permutations=300, record=False)
    with Database(ranked["db"], read_only=True) as db:
        for key, hook in (("a", HOOKS[0]), ("b", HOOKS[1])):
            stored = dict(((x, y), v) for x, y, v in db.sql(
                "SELECT emotion_a, emotion_b, cosine FROM emotion_similarity WHERE hook = ?", [hook]))
            sim = c.sides[key].similarity_EE
            assert all(sim[i, j] == pytest.approx(stored[a, b], abs=1e-5)
                       for i, a in enumerate(EMOTIONS) for j, b in enumerate(EMOTIONS))
            clusters = dict(db.sql("SELECT emotion, cluster FROM emotion_clusters WHERE hook = ?", [hook]))
            assert C.adjusted_rand(c.sides[key].clusters, [clusters[e] for e in EMOTIONS]) == 1.0
            acc = dict(db.sql("SELECT method, accuracy FROM probe_results WHERE hook = ? AND sae_id IS NULL", [hook]))
            assert {p["method"]: p["accuracy"] for p in c.sides[key].probes} == acc
            assert all(p["ci_lo"] <= p["accuracy"] <= p["ci_hi"] for p in c.sides[key].probes)
            n_test = db.scalar("SELECT count(*) FROM stories WHERE split = 'test' AND emotion IN ?", [EMOTIONS])
    iu = np.triu_indices(len(EMOTIONS), 1)
    for key in ("a", "b"):
        want = spearmanr(c.sides[key].similarity_EE[iu], c.sides["baseline"].similarity_EE[iu]).statistic
        assert c.pairs[f"{key}~baseline"]["rsa"] == pytest.approx(want)
        assert sum(c.sides[key].explained_variance) <= 1 + 1e-3   # shares rounded to 4 places
    (lexical,) = c.sides["baseline"].probes
    assert lexical["method"] == C.LEXICAL_PROBE and lexical["n_test"] == n_test and 0 <= lexical["accuracy"] <= 1
    assert c.sides["baseline"].vectors_ED.sum(0).abs().max() < 1e-5    # centred like the emotion vectors


def test_lexical_probe_finds_words_that_name_the_emotion():
    stories = [(e, split, f"{e} {e} story number {i}") for e in ("sad", "glad", "mad")
               for i, split in enumerate(["train"] * 4 + ["test"] * 2)]
    vectors, probe = C.lexical_baseline(stories, ["glad", "mad", "sad"], "hand", seed=0)
    assert probe is not None and probe["accuracy"] == 1.0 and probe["n_test"] == 6
    assert vectors.shape[0] == 3
    with pytest.raises(C.CompareError, match="no story texts"):
        C.lexical_baseline([(e, s, None) for e, s, _ in stories], ["glad", "mad", "sad"], "hand", seed=0)


def test_an_sae_side_uses_its_feature_means_and_probe(ranked):
    c = C.compare(ranked["db"], ranked["sae"], f"tiny@{HOOKS[0]}", n_permutations=100, record=False)
    a = c.sides["a"]
    assert a.kind == "sae" and a.vectors_ED.shape == (len(EMOTIONS), 128)
    assert [p["method"] for p in a.probes] == ["sae_top_features"]
    assert -1 <= c.pairs["a~b"]["rsa"] <= 1 and any("is an SAE" in n for n in c.notes)


def test_ratings_are_scored_alike_for_both_sides_and_the_baseline(ranked, tmp_path):
    db_path = tmp_path / "rated.duckdb"
    shutil.copy(ranked["db"], db_path)
    with Database(db_path) as db:   # a ranking given --ratings stores them here
        for i, e in enumerate(EMOTIONS):
            db.sql("UPDATE emotions SET valence = ?, arousal = ? WHERE emotion = ?", [i % 4 - 1.5, (i * 7) % 5, e])
    c = C.compare(db_path, "tiny@1", "tiny@3", n_permutations=50, record=False)
    assert c.ratings_source == "emotions table, shared emotions"
    for side in c.sides.values():
        for target in ("valence", "arousal"):
            r = side.ratings[target]
            assert r["source"] == "computed" and r["n"] == len(EMOTIONS) and abs(r["best_pc_r"]) <= 1
    plain = C.compare(ranked["db"], "tiny@1", "tiny@3", n_permutations=50, record=False)
    assert not plain.sides["a"].ratings and any("no valence/arousal ratings" in n for n in plain.notes)


def test_bad_inputs_on_a_database(ranked):
    with pytest.raises(C.CompareError, match=r"tiny@blocks\.1\.hook_resid_post.*tiny@blocks\.3"):
        C.compare(ranked["db"], "gemma@12", "tiny@1", record=False)
    with pytest.raises(C.CompareError, match=r"no results on corpus 'other'.*\['shipped'\]"):
        C.compare(ranked["db"], "tiny@1", "tiny@3", corpus_id="other", record=False)
    with pytest.raises(C.CompareError, match="n_permutations"):
        C.compare(ranked["db"], "tiny@1", "tiny@3", n_permutations=-1, record=False)


def test_cli_writes_the_files_and_records_a_row(ranked, tmp_path):
    with Database(ranked["db"], read_only=True) as db:
        before = db.scalar("SELECT count(*) FROM comparisons")
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", "tiny@1", "tiny@3", "--db", ranked["db"], "--out", str(out),
                                      "--permutations", "200", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert f"A: tiny@{HOOKS[0]}" in result.output and "A ~ B, baseline partialled out" in result.output
    saved = json.loads((out / "compare.json").read_text())
    assert saved["pairs"]["a~b"]["rsa_p"] >= 1 / 201 and saved["seed"] == 5 and len(saved["similarity"]["a"]) == 6
    page = (out / "compare.md").read_text()
    assert "| A ~ B |" in page and "| probe lexical_nearest_mean |" in page
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Database(ranked["db"], read_only=True) as db:
        assert db.scalar("SELECT count(*) FROM comparisons") == before + 1
        row = Q.comparison(db, saved["comparison_id"])
        status = db.scalar("SELECT status FROM runs WHERE run_id = ?", [saved["comparison_id"]])
    assert row is not None and status == "done"
    assert (row["side_a"], row["side_b"], row["n_permutations"]) == (f"tiny@{HOOKS[0]}", f"tiny@{HOOKS[1]}", 200)
    assert row["metrics"]["pairs"] == saved["pairs"]
    bad = CliRunner().invoke(app, ["compare", "tiny@7", "tiny@3", "--db", ranked["db"], "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "layer 7 matches no hook" in bad.output
