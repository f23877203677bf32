"""The ranking stage end to end on the tiny model, a real sae-lens SAE and a real DuckDB file."""

import json

import pytest
import torch

from saekit import rank as R
from saekit.corpus import load_corpus
from saekit.db import Database, read_only_query
from saekit.harvest import HarvestConfig, harvest
from saekit.sae import build_training_sae, load_sae, save_sae

HOOK = "blocks.2.hook_resid_post"
EMOTIONS = ["calm", "afraid", "joyful"]


@pytest.fixture(scope="module")
def ranked(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rank")
    records = [r for r in load_corpus(emotions=EMOTIONS) if r.emotion != "neutral" or r.id.endswith(("1", "2"))]
    acts = harvest(HarvestConfig(model="tiny", hooks=["blocks.1.hook_resid_post", HOOK], token_hooks=[HOOK],
                                 out=str(tmp / "acts"), max_tokens=96, batch_size=16), model=tiny_model, records=records)
    torch.manual_seed(0)
    sae = build_training_sae("topk", 64, 128, k=8, metadata={"hook_name": HOOK, "model_name": "tiny"})
    folder = save_sae(sae, tmp / "sae")
    loaded = load_sae(folder, model=tiny_model).sae
    cfg = R.RankConfig(activations=str(acts), sae=str(folder), db=str(tmp / "f.duckdb"), kmeans_k=2)
    db = Database(cfg.db)
    result = R.run_rank(cfg, sae=loaded, model=tiny_model, tokenizer=tiny_model.tokenizer, db=db)
    db.close()
    return cfg, result, loaded


def test_every_feature_emotion_pair_is_stored_with_valid_ranks(ranked):
    cfg, result, sae = ranked
    rows = read_only_query("SELECT emotion, count(*) AS n, min(selectivity_rank) AS lo, max(selectivity_rank) AS hi, "
                           "count(DISTINCT selectivity_rank) AS distinct_ranks, min(auroc) AS a0, max(auroc) AS a1 "
                           "FROM feature_emotion_stats GROUP BY emotion ORDER BY emotion", cfg.db).to_pylist()
    assert [r["emotion"] for r in rows] == sorted(EMOTIONS)
    for r in rows:
        assert r["n"] == 128 and r["lo"] == 1 and r["hi"] == 128 and r["distinct_ranks"] == 128
        assert 0 <= r["a0"] <= r["a1"] <= 1


def test_stored_stats_equal_a_direct_recomputation(ranked):
    cfg, result, sae = ranked
    enc = result["sae"]["enc"]
    top = read_only_query("SELECT feature, auroc, mean_in FROM feature_emotion_stats "
                          "WHERE emotion = 'afraid' AND selectivity_rank = 1", cfg.db).to_pylist()[0]
    docs = R.Activations.open(cfg.activations).documents
    train = [i for i, d in enumerate(docs) if d["split"] == "train" and d["label"] in EMOTIONS]
    x = enc.mean_NF[train, top["feature"]]
    is_afraid = torch.tensor([docs[i]["label"] == "afraid" for i in train])
    assert top["mean_in"] == pytest.approx(float(x[is_afraid].mean()), rel=1e-5)
    pairs = (x[is_afraid][:, None] > x[~is_afraid][None, :]).double().mean() + \
        0.5 * (x[is_afraid][:, None] == x[~is_afraid][None, :]).double().mean()
    assert top["auroc"] == pytest.approx(float(pairs), abs=1e-6)


def test_examples_logit_lens_vectors_and_probes_are_stored(ranked):
    cfg, result, sae = ranked
    ex = read_only_query("SELECT * FROM feature_examples ORDER BY feature, kind, example_rank LIMIT 20", cfg.db).to_pylist()
    assert ex and all(e["token_end"] > e["token_start"] >= 1 and e["snippet"] for e in ex)
    assert all(len(e["tokens"]) == len(e["token_activations"]) == e["token_end"] - e["token_start"] for e in ex)
    assert {e["kind"] for e in ex} == {"story", "window"}
    feats = read_only_query("SELECT count(*) AS n, min(len(promoted_tokens)) AS k, min(len(promoted_logits)) AS kv, "
                            "bool_and(promoted_logits[1] >= promoted_logits[10]) AS ordered, "
                            "bool_and(list_sum(hist_counts) = round(firing_rate * (SELECT counted_tokens FROM saes))) "
                            "AS hist_ok, min(token_rule->>'$.skip_first') AS skip FROM features JOIN runs USING (run_id)",
                            cfg.db).to_pylist()[0]
    assert feats == {"n": 128, "k": 10, "kv": 10, "ordered": True, "hist_ok": True, "skip": "1"}
    sae_row = read_only_query("SELECT token_rule, counted_tokens, dropped_tokens FROM saes JOIN runs USING (run_id)",
                              cfg.db).to_pylist()[0]
    docs = R.Activations.open(cfg.activations).documents
    assert sae_row["dropped_tokens"] == len(docs)
    assert sae_row["counted_tokens"] == sum(d["n_tokens"] for d in docs) - len(docs)
    assert json.loads(sae_row["token_rule"])["description"] == "positions >= 1"
    prec = read_only_query("SELECT feature, sum(top_story_precision) AS s FROM feature_emotion_stats GROUP BY feature",
                           cfg.db).to_pylist()
    assert all(0 <= p["s"] <= 1 + 1e-6 for p in prec) and any(p["s"] > 0 for p in prec)
    lens = read_only_query("SELECT direction, count(*) AS n, min(top_n) AS top FROM lens_checks GROUP BY direction "
                           "ORDER BY direction", cfg.db).to_pylist()
    assert lens == [{"direction": "emotion_vector", "n": 6, "top": 100}, {"direction": "sae_top_feature", "n": 3, "top": 100}]
    vlens = read_only_query("SELECT min(len(promoted_logits)) AS k FROM emotion_vectors", cfg.db).to_pylist()[0]
    assert vlens["k"] == 10
    vec = read_only_query("SELECT hook, count(*) AS n, min(len(vector)) AS d FROM emotion_vectors GROUP BY hook "
                          "ORDER BY hook", cfg.db).to_pylist()
    assert vec == [{"hook": "blocks.1.hook_resid_post", "n": 3, "d": 64}, {"hook": HOOK, "n": 3, "d": 64}]
    probes = read_only_query("SELECT method, accuracy, chance, n_test FROM probe_results ORDER BY method", cfg.db).to_pylist()
    assert {p["method"] for p in probes} == {"sae_top_features", "vector_projection", "vector_logistic"}
    assert all(p["chance"] == pytest.approx(1 / 3) and p["n_test"] > 0 for p in probes)
    align = read_only_query("SELECT emotion, max(cosine) AS c FROM vector_feature_alignment GROUP BY emotion",
                            cfg.db).to_pylist()
    assert len(align) == 3 and all(-1 <= a["c"] <= 1 for a in align)
    runs = read_only_query("SELECT kind, status, config FROM runs", cfg.db).to_pylist()
    assert runs[0]["kind"] == "rank" and runs[0]["status"] == "done"
    assert json.loads(runs[0]["config"])["activations"] == cfg.activations


def test_rerun_replaces_rows_instead_of_adding(ranked, tiny_model):
    cfg, result, sae = ranked
    with Database(cfg.db) as db:
        R.run_rank(cfg, sae=sae, model=tiny_model, tokenizer=tiny_model.tokenizer, db=db)
    n = read_only_query("SELECT count(*) AS n, count(DISTINCT run_id) AS runs FROM feature_emotion_stats", cfg.db)
    assert n.to_pylist() == [{"n": 3 * 128, "runs": 1}]


def test_ratings_file_gives_valence_and_arousal_correlations(ranked, tmp_path):
    cfg, result, sae = ranked
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("Word,V.Mean.Sum,A.Mean.Sum\ncalm,6.9,1.7\nafraid,2.0,6.7\njoyful,8.2,5.9\n")
    cfg2 = R.RankConfig(activations=cfg.activations, ratings=str(ratings), kmeans_k=2)
    out = R.run_rank(cfg2)
    geo = out["vectors"][HOOK]["geometry"]
    assert geo["rated_emotions"] == 3 and -1 <= geo["pc1_valence_r"] <= 1
    bad = tmp_path / "bad.csv"
    bad.write_text("word,score\ncalm,1\n")
    with pytest.raises(ValueError, match="no \\['valence', 'arousal'\\] column"):
        R.read_ratings(bad)


def test_geometry_is_stored_and_agrees_with_the_stored_vectors(ranked):
    """k-means clusters, cosine similarities and the linkage are rows, recomputable from emotion_vectors."""
    from saekit import features as Fe
    from saekit.db import features as DF

    cfg, result, sae = ranked
    with Database(cfg.db, read_only=True) as db:
        for hook in ("blocks.1.hook_resid_post", HOOK):
            rows = DF.emotion_vectors(db, "tiny", "shipped", hook)
            emotions = [r.emotion for r in rows]
            vecs = torch.tensor([r.vector for r in rows])
            assert emotions == sorted(EMOTIONS)
            stored = DF.similarity(db, "tiny", "shipped", hook, emotions)
            assert torch.allclose(torch.tensor(stored), Fe.cosine_matrix(vecs, vecs), atol=1e-6)
            assert DF.clusters(db, "tiny", "shipped", hook) == dict(zip(emotions, Fe.kmeans(vecs, 2, seed=cfg.seed)))
            k = db.sql("SELECT DISTINCT k, seed FROM emotion_clusters WHERE hook = ?", [hook])
            assert k == [(2, cfg.seed)]
            link = DF.linkage(db, "tiny", "shipped", hook)
            assert len(link) == len(emotions) - 1
            assert torch.allclose(torch.tensor(link, dtype=torch.float64),
                                  torch.from_numpy(Fe.hierarchical(vecs)), atol=1e-6)


def test_n_aligned_sets_the_features_stored_per_emotion_vector(ranked, tiny_model, tmp_path):
    cfg, result, sae = ranked
    acts = R.Activations.open(cfg.activations)
    labels = [d["label"] for d in acts.documents]
    for n in (3, 7):
        cfg_n = R.RankConfig(activations=cfg.activations, sae=cfg.sae, db=str(tmp_path / "a.duckdb"), kmeans_k=2,
                             n_aligned=n)
        with Database(cfg_n.db) as db:
            R.write_results(db, cfg_n, acts, result["emotions"], labels, result["vectors"], result["sae"], sae,
                            tiny_model, result["token_rule"], result["skipped"])
        got = read_only_query("SELECT emotion, count(*) AS n, max(alignment_rank) AS hi FROM vector_feature_alignment "
                              "GROUP BY emotion ORDER BY emotion", cfg_n.db).to_pylist()
        assert got == [{"emotion": e, "n": n, "hi": n} for e in sorted(EMOTIONS)]


def test_a_corpus_file_ranks_under_its_own_corpus_id(tiny_model, tmp_path):
    """Rows of a user's corpus land under an id derived from the config's corpus, not "shipped"."""
    from saekit.db import corpus_id_of

    words = "sun rain wind snow fog storm calm bright dark cold warm long short".split()
    rows = [{"id": f"{e}-{i}", "emotion": e, "split": "test" if i % 3 == 2 else "train",
             "text": " ".join(words[(i + j + len(e)) % len(words)] for j in range(12))}
            for e in ("glad", "sad", "mad") for i in range(6)]
    corpus = tmp_path / "my stories.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    acts = harvest(HarvestConfig(model="tiny", hooks=[HOOK], corpus=str(corpus), out=str(tmp_path / "acts"),
                                 max_tokens=32, batch_size=8), model=tiny_model)
    cfg = R.RankConfig(activations=str(acts), db=str(tmp_path / "u.duckdb"), kmeans_k=2)
    with Database(cfg.db) as db:
        R.run_rank(cfg, db=db)
    assert corpus_id_of(str(corpus)) == str(corpus) != "shipped"
    for table in ("corpora", "stories", "emotion_vectors", "probe_results", "emotion_similarity"):
        ids = read_only_query(f"SELECT DISTINCT corpus_id FROM {table}", cfg.db).column("corpus_id").to_pylist()
        assert ids == [str(corpus)], table
    run = read_only_query("SELECT config FROM runs", cfg.db).column("config").to_pylist()
    assert json.loads(run[0])["corpus_id"] == str(corpus)
    explicit = R.RankConfig(activations=str(acts), db=cfg.db, kmeans_k=2, corpus_id="mine")
    with Database(cfg.db) as db:
        R.run_rank(explicit, db=db)
    ids = read_only_query("SELECT DISTINCT corpus_id FROM stories ORDER BY 1", cfg.db).column("corpus_id").to_pylist()
    assert ids == sorted(["mine", str(corpus)])


def test_the_training_stories_mean_is_stored_per_hook(ranked):
    """story_means holds the centre the vector probes project from: the train split's pooled mean."""
    from saekit.harvest import Activations

    cfg, result, sae = ranked
    acts = Activations.open(cfg.activations)
    docs = acts.documents
    train = [i for i, d in enumerate(docs) if d["split"] == "train" and d["label"] in EMOTIONS and d["n_tokens"] > 1]
    with Database(cfg.db, read_only=True) as db:
        for hook in ("blocks.1.hook_resid_post", HOOK):
            (mean, n, rule), = db.sql("SELECT mean, n, token_rule FROM story_means JOIN runs USING (run_id) WHERE hook = ?",
                                     [hook])
            assert n == len(train)
            assert torch.allclose(torch.tensor(mean), acts.pooled(hook, "mean")[train].mean(0), atol=1e-5)
            assert json.loads(rule)["skip_first"] == 1
