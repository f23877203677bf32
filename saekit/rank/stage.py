"""Rank SAE features by emotion selectivity, build the paper's emotion vectors, and store it all.

Input: a finished harvest folder (per-token activations at the SAE's hook, pooled vectors at
every harvested hook) and an SAE. Output: rows in the feature database (see analysis/SCHEMA.md)
and a JSON summary. Selectivity is computed on the train split; probes are scored on the test
split. Without an SAE only the emotion-vector half runs.
"""

from __future__ import annotations

import collections
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from saekit import evidence as Ev
from saekit import features as Fe
from saekit.activations import Activations, harvest_records
from saekit.artifacts import story_of
from saekit.corpus import NEUTRAL, POSITIVE_CLUSTERS, CorpusError, emotion_table
from saekit.corpus_style import StyleReport, style_geometry, style_report, style_warnings
from saekit.db import Database, corpus_id_of
from saekit.rank.config import SAE_TRAIN_RECORD, RankConfig, RankError, read_ratings
from saekit.rank.eval_corpus import eval_lines, eval_probes, read_eval_corpus
from saekit.rank.rows import write_results
from saekit.tokens import TokenRule

# ---------------------------------------------------------------------------- the stage


def train_style(acts: Activations, train: list[int]) -> StyleReport | None:
    """Style statistics of the train stories the vectors are built from (None when the corpus the
    harvest read is gone, or has no labelled stories)."""
    try:
        texts = {r.id: r for r in harvest_records(acts.manifest["config"])}
    except Exception:  # the corpus moved since the harvest: no style geometry
        return None
    seen, records = set(), []
    tokens: collections.Counter[str] = collections.Counter()
    for d in acts.documents:   # a windowed story's tokens are its windows' together
        tokens[story_of(d["id"])] += int(d["n_tokens"])
    for i in train:
        story = story_of(acts.documents[i]["id"])
        if story in texts and story not in seen:
            seen.add(story)
            records.append(texts[story])
    try:
        return style_report(records, tokens=dict(tokens))
    except CorpusError:
        return None



def emotion_vector_analysis(acts: Activations, cfg: RankConfig, emotions: list[str], train: list[int],
                            test: list[int], labels: list[str], neutral: list[int]) -> dict[str, Any]:
    """Per harvested hook: emotion vectors, their probes on the test split, and geometry."""
    out: dict[str, Any] = {}
    ratings = read_ratings(cfg.ratings)
    clusters = emotion_table()
    style = train_style(acts, train)
    for hook in acts.manifest["hooks"]:
        pooled = acts.pooled(hook, "mean")
        vecs, k = Fe.emotion_vectors(pooled[train], [labels[i] for i in train], emotions,
                                     neutral_ND=pooled[neutral] if neutral else None, variance=cfg.neutral_variance)
        centre = pooled[train].mean(0)
        proj = Fe.projection_probe(vecs, pooled[test] - centre, [labels[i] for i in test], emotions,
                                   [labels[i] for i in train])
        unit = vecs / vecs.norm(dim=1, keepdim=True)
        logi = Fe.logistic_probe((pooled[train] - centre) @ unit.T, [labels[i] for i in train],
                                 (pooled[test] - centre) @ unit.T, [labels[i] for i in test], emotions, seed=cfg.seed)
        scores, ratio = Fe.pca(vecs, n=min(5, len(emotions)))
        geo: dict[str, Any] = {"explained_variance": [round(float(r), 4) for r in ratio],
                               "pc1": scores[:, 0].tolist(), "pc2": scores[:, 1].tolist()}
        rated = [i for i, e in enumerate(emotions) if e in ratings]
        if len(rated) >= 3:
            val = torch.tensor([ratings[emotions[i]][0] for i in rated])
            aro = torch.tensor([ratings[emotions[i]][1] for i in rated])
            geo["pc1_valence_r"] = Fe.pearson(scores[rated, 0], val)
            geo["pc2_arousal_r"] = Fe.pearson(scores[rated, 1], aro)
            geo["rated_emotions"] = len(rated)
            geo["ratings"] = Fe.rating_geometry(vecs, rated, {"valence": val, "arousal": aro})
        else:
            geo["pc1_valence_r"] = geo["pc2_arousal_r"] = None
            geo["ratings_note"] = "no human ratings file given (--ratings); see the README"
        if style is not None:
            geo["style"] = style_geometry(vecs, emotions, style, {e: v for e, (v, _) in ratings.items()})
            geo["style_warnings"] = style_warnings(geo["style"])
            geo["style_lists"] = {"body": style.lists.body_path, "cognition": style.lists.cognition_path}
        sign = [1.0 if clusters.get(e, {}).get("cluster") in POSITIVE_CLUSTERS else -1.0 for e in emotions]
        geo["pc1_vs_cluster_valence_sign_r"] = Fe.pearson(scores[:, 0], torch.tensor(sign))
        geo["pc2_vs_cluster_valence_sign_r"] = Fe.pearson(scores[:, 1], torch.tensor(sign))
        k_clusters = min(cfg.kmeans_k, len(emotions) - 1)
        geo["kmeans"] = dict(zip(emotions, Fe.kmeans(vecs, k_clusters, seed=cfg.seed))) if k_clusters >= 2 else {}
        geo["linkage"] = Fe.hierarchical(vecs).tolist()
        geo["similarity"] = Fe.cosine_matrix(vecs, vecs).tolist()
        out[hook] = {"vectors": vecs, "neutral_pcs": k, "projection_probe": proj, "logistic_probe": logi,
                     "geometry": geo, "centre": centre, "n_centre": len(train)}
    return out


def run_rank(cfg: RankConfig, sae=None, model=None, tokenizer=None, db: Database | None = None) -> dict[str, Any]:
    """Rank features and build vectors; write every table's rows for this SAE and corpus.

    `sae` is a sae-lens SAE (anything with encode() and W_dec works); `model` gives the logit
    lens and tokenizer. Returns a summary dict (also what `saekit rank` prints).
    """
    from saekit.sae import hook_of

    torch.manual_seed(cfg.seed)
    acts = Activations.open(cfg.activations)
    if cfg.corpus_id is None:
        cfg = replace(cfg, corpus_id=corpus_id_of(acts.manifest["config"].get("corpus")))
    docs = acts.documents
    hook = hook_of(sae) if sae is not None else None
    if hook is not None and hook not in acts.manifest["hooks"]:
        raise RankError(f"the SAE reads {hook}, but {cfg.activations} harvested {acts.manifest['hooks']}")
    rule = resolve_token_rule(cfg, acts, hook)
    skipped = {i: f"{d['id']}: no counted tokens ({d['n_tokens']} tokens, rule: {rule.describe()})"
               for i, d in enumerate(docs) if d["n_tokens"] <= rule.skip_first}
    labels = [d["label"] for d in docs]
    emotions = study_emotions(acts, cfg.activations)
    eval_set = read_eval_corpus(cfg, emotions)   # a bad eval corpus fails here, before any compute
    train, test, neutral = _splits(docs, labels, emotions, skipped)
    vec = emotion_vector_analysis(acts, cfg, emotions, train, test, labels, neutral)
    summary: dict[str, Any] = {"emotions": len(emotions), "train_stories": len(train), "test_stories": len(test),
                               "chance": round(1 / len(emotions), 4), "token rule": rule.describe()}
    unembed = None
    if model is not None:
        from saekit.model import unembed as model_unembed

        unembed = model_unembed(model)
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    for h, v in vec.items():
        summary[f"vector probe accuracy @ {h}"] = round(v["projection_probe"].accuracy, 4)
        summary[f"vector logistic accuracy @ {h}"] = round(v["logistic_probe"].accuracy, 4)
        summary[f"PC1 vs cluster valence sign r @ {h}"] = round(v["geometry"]["pc1_vs_cluster_valence_sign_r"], 3)
        summary[f"PC2 vs cluster valence sign r @ {h}"] = round(v["geometry"]["pc2_vs_cluster_valence_sign_r"], 3)
        if v["geometry"].get("style_warnings"):
            summary[f"style warnings @ {h}"] = " | ".join(v["geometry"]["style_warnings"])
        if v["geometry"]["pc1_valence_r"] is not None:
            summary[f"PC1 ~ valence r @ {h}"] = round(v["geometry"]["pc1_valence_r"], 3)
            summary[f"PC2 ~ arousal r @ {h}"] = round(v["geometry"]["pc2_arousal_r"], 3)
            summary.update(_rating_lines(v["geometry"]["ratings"], h))
        if unembed is not None:
            v["lens"] = Ev.logit_lens(v["vectors"], *unembed, n=cfg.logit_lens_tokens)
            v["own_word"] = Ev.own_word_check(v["vectors"], emotions, *unembed, tokenizer, top=cfg.own_word_top,
                                              n_random=cfg.lens_random, seed=cfg.seed)
            summary[f"own word in top {cfg.own_word_top} @ {h} (random mean)"] = _own_word_line(v["own_word"])

    sae_part = None
    if sae is not None:
        from saekit.sae import d_sae_of

        sae_part = sae_evidence(cfg, acts, sae, rule, emotions, labels, train, test, vec, unembed, tokenizer)
        enc, sel = sae_part["enc"], sae_part["sel"]
        skipped.update(enc.skipped)
        summary["counted tokens"] = enc.n_tokens
        summary["dropped tokens (first positions / norm)"] = f"{enc.n_dropped_first} / {enc.n_dropped_norm}"
        summary["SAE features"] = d_sae_of(sae)
        summary[f"SAE top-feature probe accuracy @ {hook}"] = round(sae_part["probe"].accuracy, 4)
        summary["features with q < 0.05 for some emotion"] = int((sel.q_value < 0.05).any(0).sum())
        summary["features never active on counted tokens"] = int((enc.peak_F <= 0).sum())
        top1 = sel.rank.argmin(dim=1)
        prec = sae_part["precision"][torch.arange(len(emotions)), top1]
        summary[f"top feature's top-{cfg.n_examples} stories from its emotion (median)"] = round(float(prec.median()), 3)
        if "own_word" in sae_part:
            summary[f"own word in top {cfg.own_word_top} @ top SAE features (random mean)"] = \
                _own_word_line(sae_part["own_word"])
    summary["texts skipped (no counted tokens)"] = len(skipped)
    eval_part = None
    if eval_set is not None:
        eval_part = eval_probes(cfg, acts, eval_set, emotions, labels, train, vec, sae_part, sae, model, tokenizer,
                                rule)
        summary.update(eval_lines(eval_part))
    if db is not None:
        write_results(db, cfg, acts, emotions, labels, vec, sae_part, sae, model, rule, skipped, eval_part)
    return {"summary": summary, "vectors": vec, "sae": sae_part, "emotions": emotions, "token_rule": rule,
            "skipped": skipped, "eval": eval_part}


def study_emotions(acts: Activations, where: str) -> list[str]:
    """The emotions a harvest's stories carry (neutral texts aside); at least two, or the ranking has nothing to do."""
    emotions = sorted({d["label"] for d in acts.documents if d["label"] and d["label"] != NEUTRAL})
    if len(emotions) < 2:
        raise RankError(f"{where}: need stories of at least 2 emotions, found {emotions}")
    return emotions


def _rating_lines(rows: list[dict], hook: str) -> dict[str, str]:
    """Summary lines: each rating's best-aligned PC and its leave-one-out decoding from the vectors."""
    out = {}
    for target in ("valence", "arousal"):
        pcs = [r for r in rows if r["target"] == target and r["predictor"].startswith("PC") and r["r"] == r["r"]]
        if pcs:
            best = max(pcs, key=lambda r: abs(r["r"]))
            out[f"{target} best PC @ {hook}"] = f"{best['predictor']} (r = {best['r']:.3f}, p = {best['p_value']:.3g})"
        loo = [r for r in rows if r["target"] == target and r["predictor"] == "loo_ridge"]
        if loo:
            out[f"{target} decoded leave-one-out @ {hook}"] = (f"r = {loo[0]['r']:.3f}, R2 = {loo[0]['r2']:.3f} "
                                                               f"(n {loo[0]['n']})")
    return out


def preflight(cfg: RankConfig) -> None:
    """The checks a ranking can make before a model loads: the harvest folder and the eval corpus."""
    acts = Activations.open(cfg.activations)
    read_eval_corpus(cfg, study_emotions(acts, cfg.activations))


def _own_word_line(check: dict) -> str:
    return f"{check['hits']}/{check['emotions']} ({check['random_mean_hits']:.1f}, p={check['p_value']:.3f})"


def _splits(docs, labels, emotions, skipped) -> tuple[list[int], list[int], list[int]]:
    """Train and test emotion stories and the neutral texts, leaving out texts with no counted tokens."""
    ok = [i for i in range(len(docs)) if i not in skipped]
    train = [i for i in ok if docs[i]["split"] == "train" and labels[i] in emotions]
    test = [i for i in ok if docs[i]["split"] == "test" and labels[i] in emotions]
    neutral = [i for i in ok if labels[i] == NEUTRAL and "dialogue" in docs[i]["id"]] or \
              [i for i in ok if labels[i] == NEUTRAL]
    return train, test, neutral


def resolve_token_rule(cfg: RankConfig, acts: Activations, hook: str | None) -> TokenRule:
    """The SAE's training rule (from its saekit_train.json) unless the config overrides a field."""
    trained = _trained_token_rule(cfg.sae)
    skip = trained.skip_first if cfg.skip_first is None else cfg.skip_first
    ratio = trained.max_norm_ratio if cfg.max_norm_ratio is None else cfg.max_norm_ratio
    ref = trained.reference_norm if ratio == trained.max_norm_ratio and skip == trained.skip_first else None
    rule = TokenRule(skip_first=skip, max_norm_ratio=ratio, reference_norm=ref if ratio else None)
    if rule.uses_norm and rule.reference_norm is None:
        if hook is None:
            raise RankError("the norm filter (max_norm_ratio) needs per-token activations: rank with an SAE")
        rule = rule.measured_on(acts.iter_shard_tensors(hook))
    return rule


def _trained_token_rule(sae_folder: str | None) -> TokenRule:
    record = Path(sae_folder) / SAE_TRAIN_RECORD if sae_folder else None
    if record is None or not record.is_file():
        return TokenRule()
    data = json.loads(record.read_text())
    if "token_rule" in data:
        return TokenRule.from_mapping(data["token_rule"])
    return TokenRule(skip_first=int(data.get("config", {}).get("exclude_first_token", True)))


def sae_evidence(cfg: RankConfig, acts: Activations, sae, rule: TokenRule, emotions, labels, train, test, vec,
                 unembed, tokenizer) -> dict[str, Any]:
    """Selectivity, probe, examples, histograms, alignment and logit lens of every SAE feature."""
    from saekit.sae import d_sae_of, decoder_FD, hook_of

    hook = hook_of(sae)
    if hook is None:
        raise RankError("the SAE names no hook (cfg.metadata.hook_name): it cannot be matched to the activations")
    enc = Ev.encode_documents(acts, hook, sae.encode, d_sae_of(sae), rule)
    train = [i for i in train if i not in enc.skipped]
    test = [i for i in test if i not in enc.skipped]
    sel = Fe.selectivity(enc.mean_NF[train], [labels[i] for i in train], emotions)
    chosen = sorted({f for e in emotions for f in sel.top(e, cfg.probe_features_per_emotion)})
    probe = Fe.logistic_probe(enc.mean_NF[train][:, chosen], [labels[i] for i in train],
                              enc.mean_NF[test][:, chosen], [labels[i] for i in test], emotions, seed=cfg.seed)
    dec_FD = decoder_FD(sae).detach().float()
    align = {e: Fe.cosine_matrix(vec[hook]["vectors"][j:j + 1], dec_FD)[0] for j, e in enumerate(emotions)} \
        if hook in vec else {}
    part: dict[str, Any] = {"hook": hook, "enc": enc, "sel": sel, "probe": probe, "chosen": chosen, "align": align,
            "examples": Ev.top_examples(enc, acts, hook, sae.encode, rule, tokenizer, cfg.n_examples),
            "precision": Ev.story_precision(enc, labels, emotions, cfg.n_examples), "lens": None}
    if unembed is not None:
        W_U_VD, norm_D = unembed
        part["lens"] = Ev.logit_lens(dec_FD, W_U_VD, norm_D, n=cfg.logit_lens_tokens)
        top1 = sel.rank.argmin(dim=1)
        part["top_features"] = top1.tolist()
        part["own_word"] = Ev.own_word_check(dec_FD[top1], emotions, W_U_VD, norm_D, tokenizer, top=cfg.own_word_top,
                                             n_random=cfg.lens_random, seed=cfg.seed)
    return part
