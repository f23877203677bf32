"""Emotion-vector geometry against human ratings: PCs 1-5 and a leave-one-out decoding, stored and reported."""

import pytest
import torch

from saekit import features as Fe
from saekit import rank as R
from saekit import study_page as SR
from saekit.corpus import load_corpus
from saekit.db import Database, read_only_query
from saekit.harvest import HarvestConfig, harvest

HOOK = "blocks.1.hook_resid_post"
EMOTIONS = ["afraid", "angry", "calm", "joyful", "sad", "hopeful"]


def planted(E=20, D=12, seed=0):
    """Vectors whose PC1 is a large axis unrelated to the ratings, PC2 is valence and PC3 arousal."""
    g = torch.Generator().manual_seed(seed)
    centred = lambda x: x - x.mean()  # noqa: E731
    val, aro, big = (centred(torch.randn(E, generator=g)) for _ in range(3))
    q, _ = torch.linalg.qr(torch.stack([big, val, aro], 1).double())   # three orthogonal, centred axes
    scores = torch.zeros(E, D, dtype=torch.float64)
    scores[:, 0], scores[:, 1], scores[:, 2] = 30 * q[:, 0], 10 * q[:, 1], 5 * q[:, 2]
    scores[:, 3:] = 0.05 * torch.randn(E, D - 3, generator=g, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    return (scores @ basis.T).float(), q[:, 1], q[:, 2]


def test_a_rating_planted_on_pc2_is_named_and_decoded():
    vecs, val, aro = planted()
    rows = Fe.rating_geometry(vecs, list(range(len(val))), {"valence": val * 2 + 5, "arousal": 3 - aro})
    by = {(r["target"], r["predictor"]): r for r in rows}
    assert {p for _, p in by} == {"PC1", "PC2", "PC3", "PC4", "PC5", "loo_ridge"}
    for target, pc in (("valence", "PC2"), ("arousal", "PC3")):
        pcs = [r for r in rows if r["target"] == target and r["predictor"].startswith("PC")]
        assert max(pcs, key=lambda r: abs(r["r"]))["predictor"] == pc
        assert abs(by[target, pc]["r"]) > 0.999 and abs(by[target, "PC1"]["r"]) < 0.01
        loo = by[target, "loo_ridge"]
        assert loo["r"] > 0.99 and loo["r2"] > 0.98 and loo["ci_lo"] <= loo["r"] <= loo["ci_hi"] and loo["n"] == 20
    assert by["valence", "PC1"]["explained_variance"] > by["valence", "PC2"]["explained_variance"]


def test_loo_decoding_of_noise_finds_nothing():
    vecs, _, _ = planted()
    noise = torch.randn(20, generator=torch.Generator().manual_seed(5))
    loo = [r for r in Fe.rating_geometry(vecs, list(range(20)), {"valence": noise}) if r["predictor"] == "loo_ridge"]
    assert loo[0]["r2"] < 0.3


def test_loo_ridge_never_sees_the_held_out_row():
    """Changing one emotion's rating leaves its own leave-one-out prediction unchanged."""
    vecs, val, _ = planted()
    changed = val.clone()
    changed[3] += 100
    a, b = Fe.loo_ridge(vecs, val), Fe.loo_ridge(vecs, changed)
    assert a[3] == pytest.approx(float(b[3]), abs=1e-9) and not torch.allclose(a, b)


def test_fewer_emotions_give_fewer_pcs_and_no_decoding_below_four():
    vecs, val, aro = planted(E=3)
    rows = Fe.rating_geometry(vecs, [0, 1, 2], {"valence": val})
    assert [r["predictor"] for r in rows] == ["PC1", "PC2"]   # three centred points span two axes
    assert all(r["ci_lo"] != r["ci_lo"] for r in rows)        # no interval from three points (NaN)


@pytest.fixture(scope="module")
def ranked(tiny_model, tmp_path_factory):
    """Six emotions' vectors on the tiny model, ranked without ratings (the fallback)."""
    tmp = tmp_path_factory.mktemp("geometry")
    records = [r for r in load_corpus(emotions=EMOTIONS) if r.emotion != "neutral"]
    acts = harvest(HarvestConfig(model="tiny", hooks=[HOOK], token_hooks=[], out=str(tmp / "acts"), max_tokens=32,
                                 batch_size=32), model=tiny_model, records=records)
    cfg = R.RankConfig(activations=str(acts), db=str(tmp / "f.duckdb"), kmeans_k=2)
    with Database(cfg.db) as db:
        out = R.run_rank(cfg, db=db)
    return tmp, cfg, out


def test_without_ratings_the_labelled_fallback_stays(ranked):
    tmp, cfg, out = ranked
    geo = out["vectors"][HOOK]["geometry"]
    assert geo["pc1_valence_r"] is None and "ratings_note" in geo and "ratings" not in geo
    assert f"PC1 vs cluster valence sign r @ {HOOK}" in out["summary"]
    assert not any("best PC" in k or "leave-one-out" in k for k in out["summary"])
    assert read_only_query("SELECT count(*) AS n FROM rating_geometry", cfg.db).to_pylist() == [{"n": 0}]
    with Database(cfg.db, read_only=True) as db:
        assert SR.rating_geometry_table(db, "tiny", "shipped", HOOK) is None


def test_ratings_on_pc2_are_stored_named_and_reported(ranked, tmp_path):
    tmp, cfg, out = ranked
    vecs = out["vectors"][HOOK]["vectors"]
    scores, _ = Fe.pca(vecs, 5)
    emotions = out["emotions"]
    ratings = tmp_path / "ratings.csv"   # valence is the vectors' PC2, arousal their PC1 reversed
    ratings.write_text("word,valence,arousal\n" + "".join(
        f"{e},{5 + float(scores[i, 1]):.6f},{5 - float(scores[i, 0]):.6f}\n" for i, e in enumerate(emotions)))
    db_path = tmp_path / "f.duckdb"
    cfg2 = R.RankConfig(activations=cfg.activations, db=str(db_path), kmeans_k=2, ratings=str(ratings))
    with Database(cfg2.db) as db:
        out2 = R.run_rank(cfg2, db=db)
    rows = read_only_query("SELECT target, predictor, r, r2, n FROM rating_geometry ORDER BY target, predictor",
                           str(db_path)).to_pylist()
    assert [(r["target"], r["predictor"]) for r in rows] == [
        (t, p) for t in ("arousal", "valence") for p in ("PC1", "PC2", "PC3", "PC4", "PC5", "loo_ridge")]
    by = {(r["target"], r["predictor"]): r for r in rows}
    assert by["valence", "PC2"]["r"] == pytest.approx(1, abs=1e-4) and by["arousal", "PC1"]["r"] == pytest.approx(-1, abs=1e-4)
    assert all(r["n"] == 6 and -1 <= r["r"] <= 1 for r in rows)
    assert out2["summary"][f"valence best PC @ {HOOK}"].startswith("PC2 (r = 1.000")
    assert out2["summary"][f"arousal best PC @ {HOOK}"].startswith("PC1 (r = -1.000")
    assert f"valence decoded leave-one-out @ {HOOK}" in out2["summary"]
    with Database(str(db_path), read_only=True) as db:
        table, sentence = SR.rating_geometry_table(db, "tiny", "shipped", HOOK)
    assert "valence is best aligned with PC2 (r = 1.00" in sentence and "not PC1" in sentence
    assert "arousal is best aligned with PC1 (r = -1.00" in sentence and "over 6 rated emotions" in sentence
    assert table.count("<tr>") == 3 and "PC5 r" in table
    # a ranking without ratings removes the rows it would no longer stand behind
    with Database(cfg2.db) as db:
        R.run_rank(R.RankConfig(activations=cfg.activations, db=str(db_path), kmeans_k=2), db=db)
    assert read_only_query("SELECT count(*) AS n FROM rating_geometry", str(db_path)).to_pylist() == [{"n": 0}]
