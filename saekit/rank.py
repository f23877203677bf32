"""Rank SAE features by emotion selectivity, build the paper's emotion vectors, and store it all.

Input: a finished harvest folder (per-token activations at the SAE's hook, pooled vectors at
every harvested hook) and an SAE. Output: rows in the feature database (see analysis/SCHEMA.md)
and a JSON summary. Selectivity is computed on the train split; probes are scored on the test
split. Without an SAE only the emotion-vector half runs.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from saekit import evidence as Ev
from saekit import features as Fe
from saekit.artifacts import fault_point, story_of
from saekit.config import to_dict
from saekit.corpus import NEUTRAL, POSITIVE_CLUSTERS, CorpusError, Record, emotion_table, load_corpus
from saekit.corpus_style import StyleReport, stored_rows, style_geometry, style_report, style_warnings
from saekit.db import Database, corpus_id_of, sae_id_of
from saekit.db import ranking as W
from saekit.errors import SaekitError
from saekit.harvest import Activations, HarvestConfig, harvest, harvest_records, hook_layer
from saekit.tokens import TokenRule


@dataclass
class RankConfig:
    activations: str = "artifacts/study/activations"
    """A finished harvest folder."""
    sae: str | None = None
    """SAE folder (SAELens format) or sae-lens release; None ranks only the emotion vectors."""
    sae_id: str | None = None
    """The SAE's id within a sae-lens release."""
    corpus_id: str | None = None
    """The corpus's id in the database; None: from the harvest's corpus ("shipped", or its path as given)."""
    db: str | None = None
    """Database file (default artifacts/saekit.duckdb or $SAEKIT_DB)."""
    probe_features_per_emotion: int = 5
    """Top selective features per emotion fed to the held-out classifier."""
    n_examples: int = 5
    """Examples stored per feature and kind (top stories by pooled mean; top windows by peak token)."""
    logit_lens_tokens: int = 10
    own_word_top: int = 100
    """The logit-lens check: does an emotion's own word rank among its direction's top N promoted tokens?"""
    lens_random: int = 200
    """Random directions of equal norm that give the check's chance rate."""
    skip_first: int | None = None
    """Positions left out at the start of every text (saekit.tokens); None: the SAE's training rule, else 1."""
    max_norm_ratio: float | None = None
    """Also leave out positions above this multiple of the median norm (0: off); None: the SAE's training rule."""
    n_aligned: int = 10
    """SAE features stored per emotion vector, by decoder cosine."""
    neutral_variance: float = 0.5
    """Variance of the neutral dialogues whose principal components are projected out."""
    kmeans_k: int = 10
    ratings: str | None = None
    """CSV of human valence/arousal ratings (columns word, valence, arousal; Warriner et al. 2013
    and NRC-VAD column names are recognised). Not shipped: their licences do not allow it."""
    seed: int = 0
    eval_corpus: str | None = None
    """An extra labelled corpus (any format the harvest reads) to score the probes on, beyond the study's corpus."""
    eval_text_column: str = "text"
    eval_label_column: str = "emotion"
    """The eval corpus's label column: its values are matched to the study's emotions (case ignored)."""

    def __post_init__(self):
        TokenRule(skip_first=1 if self.skip_first is None else self.skip_first,
                  max_norm_ratio=self.max_norm_ratio or 0.0)   # a bad rule fails here, before any compute


# ---------------------------------------------------------------------------- ratings


def read_ratings(path: str | Path | None) -> dict[str, tuple[float, float]]:
    """{word: (valence, arousal)} from a user's CSV; empty when no file is given."""
    if not path:
        return {}
    path = Path(path)
    if not path.exists():
        raise RankError(f"ratings file {path} does not exist")
    names = {"word": ("word", "Word", "term"), "valence": ("valence", "Valence", "V.Mean.Sum"),
             "arousal": ("arousal", "Arousal", "A.Mean.Sum")}
    delim = "\t" if path.suffix in (".tsv", ".txt") else ","
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delim)
        cols = {k: next((c for c in v if c in (reader.fieldnames or [])), None) for k, v in names.items()}
        missing = [k for k, c in cols.items() if c is None]
        if missing:
            raise RankError(f"{path}: no {missing} column (columns: {reader.fieldnames})")
        return {row[cols["word"]].strip().lower(): (float(row[cols["valence"]]), float(row[cols["arousal"]]))
                for row in reader}




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
        summary.update(_eval_lines(eval_part))
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


# ---------------------------------------------------------------------------- beyond the corpus


class RankError(SaekitError, ValueError):
    """A ranking cannot run on what it was given: the message names the file or the option."""


class EvalCorpusError(RankError):
    """The evaluation corpus cannot be scored (missing, unlabelled, no emotion in common); the message says which."""


EVAL_CENTRING = {"train_mean": "the train stories' mean", "eval_neutral_mean": "the eval corpus's neutral texts' mean"}
"""How eval activations are centred before the vector probe: the names stored in probe_results.centring."""


@dataclass
class EvalCorpus:
    """An extra labelled corpus, read and checked before any compute."""
    source: str
    corpus_id: str
    records: list[Record]
    """Its texts of the study's emotions, and its neutral texts (labels lower-cased)."""
    unknown: dict[str, int]
    """Emotions it names that the study lacks -> number of texts: listed, never scored."""
    unlabelled: int


def read_eval_corpus(cfg: RankConfig, emotions: list[str]) -> EvalCorpus | None:
    """cfg.eval_corpus's records, or None without one; refuses a missing, unlabelled or unrelated corpus."""
    if not cfg.eval_corpus:
        return None
    src, col = cfg.eval_corpus, cfg.eval_label_column
    try:
        records = load_corpus(src, text_column=cfg.eval_text_column, label_column=col)
    except CorpusError as e:
        raise EvalCorpusError(f"eval corpus: {e}") from e
    records = [dataclasses.replace(r, emotion=r.emotion.strip().lower()) for r in records]
    labels = collections.Counter(r.emotion for r in records if r.emotion)
    if not labels:
        raise EvalCorpusError(f"eval corpus {src} has no labels in column {col!r} (set eval_label_column to the "
                              "column that names each text's emotion)")
    shared = sorted(set(labels) & set(emotions))
    if not shared:
        raise EvalCorpusError(f"eval corpus {src}: none of the labels in column {col!r} ({_head(sorted(labels))}) "
                              f"is an emotion of the study ({_head(emotions)})")
    keep = set(emotions) | {NEUTRAL}
    return EvalCorpus(src, corpus_id_of(src), [r for r in records if r.emotion in keep],
                      {e: n for e, n in sorted(labels.items()) if e not in keep},
                      sum(1 for r in records if not r.emotion))


def preflight(cfg: RankConfig) -> None:
    """The checks a ranking can make before a model loads: the harvest folder and the eval corpus."""
    acts = Activations.open(cfg.activations)
    read_eval_corpus(cfg, study_emotions(acts, cfg.activations))


def _head(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def eval_probes(cfg: RankConfig, acts: Activations, ev: EvalCorpus, emotions, labels, train, vec, sae_part, sae,
                model, tokenizer, rule: TokenRule) -> dict[str, Any]:
    """The study's probes scored on the eval corpus, pooled at the same hooks with the same token rule.

    The eval texts are harvested (into a temporary folder) with the study harvest's settings, so
    pooling, truncation and the counted positions match the training stories. Vector probe:
    projection on the study's vectors after centring (on the eval corpus's neutral texts when it
    has some, else the train stories' mean). SAE probe: the ranking's logistic probe on the top
    selective features, trained on the train stories as before.
    """
    hooks = list(vec)
    sae_hook: str = sae_part["hook"] if sae_part is not None else ""
    known = {f.name for f in dataclasses.fields(HarvestConfig)}
    base = {k: v for k, v in acts.manifest["config"].items() if k in known}
    train_y = [labels[i] for i in train]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="saekit-eval-") as tmp:
        hcfg = HarvestConfig(**dict(base, corpus=ev.source, text_column=cfg.eval_text_column,
                                    label_column=cfg.eval_label_column, dataset_config="", dataset_split="",
                                    streaming=False, limit=0, out=tmp, hooks=hooks,
                                    token_hooks=[sae_hook] if sae_hook else []))
        eacts = Activations.open(harvest(hcfg, model=model, records=ev.records, tokenizer=tokenizer))
        docs = eacts.documents
        y = [d["label"] for d in docs]
        counted = [i for i, d in enumerate(docs) if d["n_tokens"] > rule.skip_first]
        scored = [i for i in counted if y[i] in emotions]
        neutral = [i for i in counted if y[i] == NEUTRAL]
        centring = "eval_neutral_mean" if neutral else "train_mean"
        for hook in hooks:
            pooled = eacts.pooled(hook, "mean")
            centre = pooled[neutral].mean(0) if neutral else acts.pooled(hook, "mean")[train].mean(0)
            probe = Fe.projection_probe(vec[hook]["vectors"], pooled[scored] - centre, [y[i] for i in scored],
                                        emotions, train_y)
            rows.append({"method": "vector_eval", "hook": hook, "probe": probe, "centring": centring})
        if sae_part is not None:
            from saekit.sae import d_sae_of

            enc = Ev.encode_documents(eacts, sae_hook, sae.encode, d_sae_of(sae), rule)
            s_scored = [i for i in scored if i not in enc.skipped]
            s_train = [i for i in train if i not in sae_part["enc"].skipped]
            chosen = sae_part["chosen"]
            probe = Fe.logistic_probe(sae_part["enc"].mean_NF[s_train][:, chosen], [labels[i] for i in s_train],
                                      enc.mean_NF[s_scored][:, chosen], [y[i] for i in s_scored], emotions,
                                      seed=cfg.seed)
            rows.append({"method": "sae_eval", "hook": sae_hook, "probe": probe, "centring": "train_mean"})
    for r in rows:
        p = r["probe"]
        r["ci"] = Fe.accuracy_interval(round(p.accuracy * p.n_test) if p.n_test else 0, p.n_test, seed=cfg.seed)
    return {"corpus": ev.source, "corpus_id": ev.corpus_id, "rows": rows, "unknown": ev.unknown,
            "unlabelled": ev.unlabelled, "texts": len(scored), "neutral": len(neutral),
            "emotions": sorted({y[i] for i in scored})}


def _eval_lines(part: dict) -> dict[str, str]:
    out = {"eval corpus": f"{part['corpus']} ({part['texts']} texts of {len(part['emotions'])} study emotions, "
                          f"{part['neutral']} neutral)"}
    for r in part["rows"]:
        p, (lo, hi) = r["probe"], r["ci"]
        what = "vector probe" if r["method"] == "vector_eval" else "SAE top-feature probe"
        out[f"eval {what} accuracy @ {r['hook']}"] = (f"{p.accuracy:.3f} [{lo:.3f}, {hi:.3f}] (n {p.n_test}, chance "
                                                       f"{p.chance:.3f}, centred on {EVAL_CENTRING[r['centring']]})")
    unknown = ", ".join(f"{e} ({n})" for e, n in part["unknown"].items())
    out["eval emotions not in the study (texts, not scored)"] = unknown or "none"
    if part["unlabelled"]:
        out["eval texts without a label (not scored)"] = str(part["unlabelled"])
    return out


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
    with db.run("rank", to_dict(cfg)) as run:
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
                story_mean=dict(scope, mean=v["centre"].tolist(), n=v["n_centre"], token_rule=rule.to_json(),
                                run_id=run),
                **_geometry_rows(v["geometry"], emotions, scope, run, cfg))
        if sae_part is not None:
            _write_sae_results(db, run, cfg, corpus_id, model_id, emotions, sae_part, sae, model, rule, skipped or {})
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
    decode = lambda rows: [[model.tokenizer.decode([t]) for t in row] for row in rows]  # noqa: E731
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
                       sae, model, rule: TokenRule, skipped: dict[int, str]) -> None:
    """The SAE's rows (its features, their statistics, examples, alignments and probe)."""
    from saekit.sae import d_in_of, d_sae_of

    sae_id = sae_id_of(cfg.sae or "", cfg.sae_id)
    sel, enc, hook = sae_part["sel"], sae_part["enc"], sae_part["hook"]
    scope = {"sae_id": sae_id, "corpus_id": corpus_id}
    E, F = sel.auroc.shape
    e_idx = torch.arange(E).repeat_interleave(F)
    f_idx = torch.arange(F).repeat(E)
    stats = {"sae_id": [sae_id] * (E * F), "corpus_id": [corpus_id] * (E * F), "feature": f_idx.tolist(),
             "emotion": [emotions[i] for i in e_idx.tolist()], "run_id": [run] * (E * F)}
    for col, t in (("mean_in", sel.mean_in), ("mean_out", sel.mean_out), ("cohens_d", sel.cohens_d),
                   ("auroc", sel.auroc), ("rate_in", sel.rate_in), ("rate_out", sel.rate_out),
                   ("p_value", sel.p_value), ("q_value", sel.q_value), ("selectivity_rank", sel.rank),
                   ("top_story_precision", sae_part["precision"])):
        stats[col] = t.flatten().tolist()
    n_tok = max(enc.n_tokens, 1)
    rule_json = rule.to_json()
    feature_cols = {"sae_id": [sae_id] * F, "feature": list(range(F)),
                    "firing_rate": (enc.fire_F / n_tok).tolist(), "mean_activation": (enc.sum_F / n_tok).tolist(),
                    "max_activation": enc.peak_F.tolist(), "hist_counts": enc.hist_FB.tolist(),
                    "token_rule": [rule_json] * F, "run_id": [run] * F}
    if sae_part["lens"] is not None:
        feature_cols.update(_lens_columns(sae_part["lens"], model))
    alignment = []
    for e, cos in sae_part["align"].items():
        order = cos.argsort(descending=True)[: cfg.n_aligned]
        alignment += [dict(scope, emotion=e, feature=int(f), cosine=float(cos[f]), alignment_rank=r + 1, run_id=run)
                      for r, f in enumerate(order)]
    sae_row = dict(_sae_quality(cfg), sae_id=sae_id, model_id=model_id, hook=hook, layer=hook_layer(hook),
                   architecture=sae.cfg.architecture(), d_in=d_in_of(sae), d_sae=d_sae_of(sae), path=cfg.sae,
                   run_id=run, token_rule=rule_json, counted_tokens=enc.n_tokens,
                   dropped_tokens=enc.n_dropped_first + enc.n_dropped_norm,
                   skipped_texts=json.dumps(sorted(skipped.values())))
    check_scope = {"model_id": model_id, "corpus_id": corpus_id, "hook": hook, "direction": "sae_top_feature",
                   "sae_id": sae_id}
    W.replace_sae_results(
        db, sae_row, corpus_id, feature_cols, stats,
        examples=[dict(r, **scope, run_id=run) for r in sae_part["examples"]], alignment=alignment,
        lens_checks=_lens_check_rows(sae_part.get("own_word"), check_scope, run, sae_part.get("top_features")),
        probe=_probe_row(run, model_id, corpus_id, hook, sae_id, "sae_top_features", sae_part["probe"]))


SAE_METRICS_FILE = "metrics.json"         # written beside an SAE by `saekit train`
SAE_TRAIN_RECORD = "saekit_train.json"


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
