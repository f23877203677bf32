"""Probes scored beyond the corpus (`saekit rank --eval-corpus`): the eval corpus, read and checked
before any compute, harvested with the study harvest's settings and scored with the study's probes."""

from __future__ import annotations

import collections
import dataclasses
import tempfile
from dataclasses import dataclass
from typing import Any

from saekit import evidence as Ev
from saekit import features as Fe
from saekit.corpus import NEUTRAL, CorpusError, Record, load_corpus
from saekit.db import corpus_id_of
from saekit.harvest import Activations, HarvestConfig, harvest
from saekit.rank.config import RankConfig, RankError
from saekit.tokens import TokenRule


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


def eval_lines(part: dict) -> dict[str, str]:
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
