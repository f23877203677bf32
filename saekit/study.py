"""The main job: the emotion study on one model from one config (grows stage by stage)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saekit.artifacts import atomic_write_json
from saekit.config import to_dict
from saekit.harvest import Activations, HarvestConfig, harvest
from saekit.model import DEFAULT_MODEL


@dataclass
class StudyConfig:
    model: str = DEFAULT_MODEL
    """Model folder, hub name, "smollm2-135m-instruct" (embedded default) or "tiny"."""
    hooks: list[str] = field(default_factory=lambda: ["blocks.20.hook_resid_post"])
    corpus: str = "shipped"
    out: str = "artifacts/study"
    batch_size: int = 8
    max_tokens: int = 256
    dtype: str = "float32"
    limit: int = 0
    """Use only the first N documents (0 = all)."""
    seed: int = 0

    def harvest_config(self) -> HarvestConfig:
        return HarvestConfig(model=self.model, hooks=list(self.hooks), corpus=self.corpus,
                             out=str(Path(self.out) / "activations"), batch_size=self.batch_size,
                             max_tokens=self.max_tokens, dtype=self.dtype, limit=self.limit)


def centroid_probe_accuracy(pooled_ND: torch.Tensor, labels: list[str], splits: list[str]) -> dict:
    """Held-out accuracy of a nearest-centroid classifier on mean-pooled activations (emotions only)."""
    keep = [i for i, lab in enumerate(labels) if lab and lab != "neutral"]
    classes = sorted({labels[i] for i in keep})
    train = [i for i in keep if splits[i] == "train"]
    test = [i for i in keep if splits[i] == "test"]
    if len(classes) < 2 or not test:
        return {"classes": len(classes), "test_docs": len(test), "accuracy": None, "chance": None}
    x = pooled_ND - pooled_ND[train].mean(0)
    x = x / x[train].std(0).clamp_min(1e-6)
    centroids_CD = torch.stack([x[[i for i in train if labels[i] == c]].mean(0) for c in classes])
    pred = torch.cdist(x[test], centroids_CD).argmin(1)
    truth = torch.tensor([classes.index(labels[i]) for i in test])
    return {"classes": len(classes), "test_docs": len(test),
            "accuracy": round(float((pred == truth).float().mean()), 3), "chance": round(1 / len(classes), 3)}


def run_study(cfg: StudyConfig, console=None, progress=None) -> dict[str, dict]:
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "study_config.json", to_dict(cfg))
    hcfg = cfg.harvest_config()
    start = time.perf_counter()
    if progress is not None:
        with progress() as bar:
            task = bar.add_task("harvest activations", total=None, rate="")

            def tick(docs, total, tokens):
                rate = tokens / max(time.perf_counter() - start, 1e-9)
                bar.update(task, completed=docs, total=total, rate=f"{rate:,.0f} tok/s")

            harvest(hcfg, progress=tick)
    else:
        harvest(hcfg)
    acts = Activations.open(hcfg.out)
    docs = acts.documents
    labels = [d["label"] for d in docs]
    splits = [d["split"] for d in docs]
    result = {"harvest": {"folder": hcfg.out, "model": cfg.model, "documents": len(docs),
                          "tokens": acts.manifest["total_tokens"], "d_model": acts.manifest["d_model"],
                          "seconds": round(time.perf_counter() - start, 1)}}
    for hook in cfg.hooks:
        result[f"emotion probe at {hook}"] = centroid_probe_accuracy(acts.pooled(hook), labels, splits)
    atomic_write_json(out / "summary.json", result)
    return result
