"""What the browser's pages show beyond the rows saekit.db.browse reads: SAEs' URL slugs, and where
an experiment used a feature (from its stored spec).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from saekit.db.browse import Reader, sae_rows


@dataclass(frozen=True)
class Sae:
    sae_id: str
    slug: str
    """Its folder name in URLs: feature/<slug>/<n>.html."""
    model_id: str
    hook: str
    d_sae: int
    info: dict = field(default_factory=dict, compare=False, hash=False)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "sae"


def saes(r: Reader) -> list[Sae]:
    """Every SAE, each with a URL slug unique in this database."""
    rows = sae_rows(r)
    out, seen = [], set()
    for i, row in enumerate(rows):
        slug = _slug(row["sae_id"].rstrip("/").split("/")[-1] if len(rows) == 1 else row["sae_id"])
        if slug in seen:
            slug = f"{slug}-{i}"
        seen.add(slug)
        out.append(Sae(row["sae_id"], slug, row["model_id"], row["hook"], int(row["d_sae"]), row))
    return out


def experiment_uses(specs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Where feature n was intervened on, as a target or as a matched random control."""
    out = []
    for exp in specs:
        stored = exp["spec"]
        for cond, t in stored.get("targets", {}).items():
            if n in t.get("features", []):
                out.append({"experiment": exp, "condition": cond, "role": "target", "label": t["label"]})
        for cond, ts in stored.get("controls", {}).items():
            if any(n in t.get("features", []) for t in ts):
                out.append({"experiment": exp, "condition": cond, "role": "random control", "label": ""})
    return out


def experiment_features(specs: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """(sae_id, feature) of every feature an experiment targeted."""
    return {(exp["sae_id"], f) for exp in specs for t in exp["spec"].get("targets", {}).values()
            for f in t.get("features", [])}
