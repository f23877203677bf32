"""The rows a ranking writes: every table's rows built from the stage's results, in one transaction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from saekit import evidence as Ev
from saekit import feature_stats as St
from saekit import features as Fe
from saekit.activations import Activations, harvest_records
from saekit.artifacts import fault_point, story_of
from saekit.config import to_dict
from saekit.corpus import emotion_table
from saekit.corpus_style import stored_rows
from saekit.db import Database, corpus_id_of, sae_id_of
from saekit.db import ranking as W
from saekit.model import hook_layer
from saekit.rank.config import SAE_METRICS_FILE, SAE_TRAIN_RECORD, RankConfig, read_ratings
from saekit.tokens import TokenRule


def write_results(db: Database, cfg: RankConfig, acts: Activations, emotions, labels, vec, sae_part, sae, model,
                  rule: TokenRule = TokenRule(), skipped: dict[int, str] | None = None,
                  eval_part: dict | None = None) -> str:
    """All rows of one ranking, each table's scope replaced, and the run's 'done' mark, in one transaction.

    A crash or kill part-way leaves the previous ranking whole (and this run 'failed', see Database.run).
    """
    model_id = acts.manifest["model"]
    corpus_id = cfg.corpus_id or corpus_id_of(acts.manifest["config"].get("corpus"))
    clusters = emotion_table()
    ratings = read_ratings(cfg.ratings)
    with db.run("rank", to_dict(cfg), token_rule=rule.to_json()) as run:   # the rule every row below counted
        W.replace_model(db, {"model_id": model_id, "source": model_id, "n_layers": acts.manifest["n_layers"],
                             "d_model": acts.manifest["d_model"], "run_id": run,
                             "d_vocab": int(model.cfg.d_vocab) if model is not None else None})
        W.replace_emotions(db, [{"emotion": e, "cluster": clusters.get(e, {}).get("cluster"),
                                 "valence": ratings.get(e, (None, None))[0], "arousal": ratings.get(e, (None, None))[1]}
                                for e in emotions])
        W.replace_corpus(db, {"corpus_id": corpus_id, "source": acts.manifest["config"]["corpus"],
                              "n_records": len(acts.documents), "run_id": run}, _story_rows(acts, corpus_id, run))
        fault_point("rank.write_results")
        for hook, v in vec.items():
            scope = {"model_id": model_id, "corpus_id": corpus_id, "hook": hook}
            lens = _lens_columns(v.get("lens"), model)
            W.replace_hook_results(
                db, model_id, corpus_id, hook,
                vectors=[dict(scope, emotion=e, norm=float(v["vectors"][j].norm()), neutral_pcs=v["neutral_pcs"],
                              vector=v["vectors"][j].tolist(), run_id=run, **{k: c[j] for k, c in lens.items()})
                         for j, e in enumerate(emotions)],
                lens_checks=_lens_check_rows(v.get("own_word"), dict(scope, direction="emotion_vector"), run),
                probes={method: _probe_row(run, model_id, corpus_id, hook, None, method, v[key])
                        for method, key in (("vector_projection", "projection_probe"),
                                            ("vector_logistic", "logistic_probe"))},
                story_mean=dict(scope, mean=v["centre"].tolist(), n=v["n_centre"],
                                run_id=run),
                **_geometry_rows(v["geometry"], emotions, scope, run, cfg))
        if sae_part is not None:
            _write_sae_results(db, run, cfg, corpus_id, model_id, emotions, sae_part, sae, model, skipped or {})
        if eval_part is not None:
            sae_id = sae_id_of(cfg.sae, cfg.sae_id) if sae_part is not None and cfg.sae else None
            W.replace_eval_probes(db, [_eval_probe_row(run, model_id, corpus_id, sae_id, eval_part, r)
                                       for r in eval_part["rows"]])
    return run


def _eval_probe_row(run, model_id, corpus_id, sae_id, part: dict, r: dict) -> dict:
    """A probe_results row of a probe trained on `corpus_id` and scored on the eval corpus."""
    row = _probe_row(run, model_id, part["corpus_id"], r["hook"], sae_id if r["method"] == "sae_eval" else None,
                     r["method"], r["probe"])
    return row | {"train_corpus_id": corpus_id, "centring": r["centring"], "ci_lo": r["ci"][0], "ci_hi": r["ci"][1],
                  "unknown_emotions": json.dumps(part["unknown"])}


def _geometry_rows(geo: dict, emotions: list[str], scope: dict, run: str, cfg: RankConfig) -> dict[str, list[dict]]:
    """The k-means clusters, cosine similarities and linkage of one hook's vectors, as table rows."""
    k = min(cfg.kmeans_k, len(emotions) - 1)   # geo["kmeans"] is empty when k < 2
    clusters = [dict(scope, emotion=e, cluster=c, k=k, seed=cfg.seed, run_id=run) for e, c in geo["kmeans"].items()]
    similarity = [dict(scope, emotion_a=a, emotion_b=b, cosine=float(geo["similarity"][i][j]), run_id=run)
                  for i, a in enumerate(emotions) for j, b in enumerate(emotions)]
    linkage = [dict(scope, step=s, left_node=int(a), right_node=int(b), distance=float(d), size=int(n), run_id=run)
               for s, (a, b, d, n) in enumerate(geo["linkage"])]
    ratings = [dict(scope, **{k: _finite(v) for k, v in r.items()}, run_id=run) for r in geo.get("ratings", [])]
    style = stored_rows(geo.get("style", []), scope, json.dumps(geo.get("style_lists")), run)
    return {"clusters": clusters, "similarity": similarity, "linkage": linkage, "rating_geometry": ratings,
            "style_geometry": style}


def _finite(v):
    """NaN (a constant side, too few points) stored as NULL."""
    return None if isinstance(v, float) and v != v else v


def _lens_columns(lens: Ev.LogitLens | None, model) -> dict[str, list]:
    """Logit-lens columns (token strings and their logits), one list entry per direction."""
    if lens is None:
        return {}
    decode = lambda rows: [Ev.decode_tokens(model.tokenizer, row) for row in rows]  # noqa: E731
    return {"promoted_tokens": decode(lens.promoted_ids), "promoted_logits": lens.promoted_logits,
            "suppressed_tokens": decode(lens.suppressed_ids), "suppressed_logits": lens.suppressed_logits}


def _lens_check_rows(check: dict | None, scope: dict, run: str, features: list[int] | None = None) -> list[dict]:
    if check is None:
        return []
    return [dict(scope, emotion=r["emotion"], feature=features[j] if features else None,
                 own_word_rank=r["own_word_rank"], own_word_in_top=r["own_word_in_top"], best_token=r["best_token"],
                 random_rate=r["random_rate"], top_n=check["top"], n_random=check["n_random"], set_hits=check["hits"],
                 set_random_mean=check["random_mean_hits"], set_p_value=check["p_value"], run_id=run)
            for j, r in enumerate(check["per_emotion"])]


def _write_sae_results(db: Database, run: str, cfg: RankConfig, corpus_id: str, model_id: str, emotions, sae_part,
                       sae, model, skipped: dict[int, str]) -> None:
    """The SAE's rows (its features, their statistics, examples, alignments and probe)."""
    from saekit.sae import d_in_of, d_sae_of

    sae_id = sae_id_of(cfg.sae or "", cfg.sae_id)
    sel, enc, hook = sae_part["sel"], sae_part["enc"], sae_part["hook"]
    scope = {"sae_id": sae_id, "corpus_id": corpus_id}
    E, F = sel.auroc.shape
    e_idx = torch.arange(E).repeat_interleave(F)
    f_idx = torch.arange(F).repeat(E)
    stats = {"sae_id": [sae_id] * (E * F), "corpus_id": [corpus_id] * (E * F), "feature": f_idx.tolist(),
             "emotion": [emotions[i] for i in e_idx.tolist()], "run_id": [run] * (E * F)} | St.stat_rows(sae_part)
    n_tok = max(enc.n_tokens, 1)
    feature_cols = {"sae_id": [sae_id] * F, "feature": list(range(F)),
                    "firing_rate": (enc.fire_F / n_tok).tolist(), "mean_activation": (enc.sum_F / n_tok).tolist(),
                    "max_activation": enc.peak_F.tolist(), "hist_counts": enc.hist_FB.tolist(),
                    "run_id": [run] * F}
    if sae_part["lens"] is not None:
        feature_cols.update(_lens_columns(sae_part["lens"], model))
    alignment = []
    for e, cos in sae_part["align"].items():
        order = cos.argsort(descending=True)[: cfg.n_aligned]
        alignment += [dict(scope, emotion=e, feature=int(f), cosine=float(cos[f]), alignment_rank=r + 1, run_id=run)
                      for r, f in enumerate(order)]
    sae_row = dict(_sae_quality(cfg), sae_id=sae_id, model_id=model_id, hook=hook, layer=hook_layer(hook),
                   architecture=sae.cfg.architecture(), d_in=d_in_of(sae), d_sae=d_sae_of(sae), path=cfg.sae,
                   run_id=run, counted_tokens=enc.n_tokens,
                   dropped_tokens=enc.n_dropped_first + enc.n_dropped_norm,
                   skipped_texts=json.dumps(sorted(skipped.values())))
    check_scope = {"model_id": model_id, "corpus_id": corpus_id, "hook": hook, "direction": "sae_top_feature",
                   "sae_id": sae_id}
    W.replace_sae_results(
        db, sae_row, corpus_id, feature_cols, stats,
        examples=[dict(r, **scope, run_id=run) for r in sae_part["examples"]], alignment=alignment,
        lens_checks=_lens_check_rows(sae_part.get("own_word"), check_scope, run, sae_part.get("top_features")),
        probe=_probe_row(run, model_id, corpus_id, hook, sae_id, "sae_top_features", sae_part["probe"]))


def _sae_quality(cfg: RankConfig) -> dict[str, Any]:
    """Quality metrics and training config of a saekit-trained SAE folder (empty for others)."""
    folder = Path(cfg.sae) if cfg.sae else None
    if folder is None or not (folder / SAE_METRICS_FILE).exists():
        return {"config": json.dumps({"source": cfg.sae, "sae_id": cfg.sae_id})}
    metrics = json.loads((folder / SAE_METRICS_FILE).read_text())
    record = json.loads((folder / SAE_TRAIN_RECORD).read_text()) if (folder / SAE_TRAIN_RECORD).exists() else {}
    act, lm = metrics.get("activations") or {}, metrics.get("lm") or {}
    return {"explained_variance": act.get("explained_variance"), "mean_l0": act.get("l0"),
            "dead_fraction": act.get("dead_fraction"), "dense_fraction": act.get("dense_fraction"),
            "ce_loss_recovered": lm.get("loss_recovered"), "kl_divergence": lm.get("kl_sae"),
            "metrics": json.dumps(metrics), "config": json.dumps(record or {"source": cfg.sae})}


def _story_rows(acts: Activations, corpus_id: str, run: str) -> list[dict]:
    try:
        texts = {r.id: r for r in harvest_records(acts.manifest["config"])}
    except Exception:  # the corpus moved since the harvest: keep ids and labels only
        texts = {}
    rows = []
    for d in acts.documents:
        r = texts.get(story_of(d["id"]))
        rows.append({"corpus_id": corpus_id, "story_id": d["id"], "emotion": d["label"], "split": d["split"],
                     "topic": r.topic if r else None, "narration": r.narration if r else None,
                     "n_words": len(r.text.split()) if r else None, "text": r.text if r else None, "run_id": run})
    return rows


def _probe_row(run, model_id, corpus_id, hook, sae_id, method, p: Fe.ProbeResult) -> dict:
    return {"run_id": run, "model_id": model_id, "corpus_id": corpus_id, "hook": hook, "sae_id": sae_id, "method": method,
            "accuracy": p.accuracy, "chance": p.chance, "majority": p.majority, "n_test": p.n_test,
            "precision": json.dumps(p.precision), "recall": json.dumps(p.recall), "confusion": json.dumps(p.confusion)}
