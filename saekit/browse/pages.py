"""The browser's pages, rendered from the database by Jinja templates (autoescaped).

The live server and the static export render the same `Page`s; only the links differ: in an
export a feature link exists only when that feature's page was written (see export.py), so every
link on disk works. Paths are the same in both: index.html, emotion/<name>.html,
feature/<sae>/<n>.html, experiments.html, search.html, and each page links relative to itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from saekit import feature_stats as St
from saekit.browse import queries as Q
from saekit.db import browse as B
from saekit.evidence import hist_edges
from saekit.model import hook_layer

TOP_FEATURES = 20
"""Features listed per emotion on its page (and exported per emotion)."""
TOP_ALIGNED = 10
"""Features listed as best aligned with each emotion vector."""
HOME_TOP = 3
"""Features shown per emotion on the home page."""
PLOTLY_JS = Path(list(find_spec("plotly").submodule_search_locations or [])[0]) / "package_data" / "plotly.min.js"  # type: ignore[union-attr]
"""plotly.js as the plotly package ships it: served and exported from there, never from a CDN."""
STATIC = Path(__file__).parent / "static"
_MISSING = object()


class NotFound(Exception):
    """No such feature, emotion or page; the server answers 404 with the message."""


@dataclass
class Page:
    template: str
    depth: int
    """Folders below the site root, so links can be written relative to the page."""
    title: str
    ctx: dict[str, Any] = field(default_factory=dict)
    status: int = 200


@dataclass
class Links:
    """Relative hrefs from one page; feature links only to pages that exist."""
    root: str
    slugs: dict[str, str]
    exported: dict[str, set[int]] | None

    def page(self, name: str) -> str:
        return self.root + name

    def emotion(self, name: str) -> str:
        return f"{self.root}emotion/{quote(name, safe='')}.html"

    def feature(self, sae_id: str, n: int) -> str | None:
        slug = self.slugs.get(sae_id)
        if slug is None or (self.exported is not None and n not in self.exported.get(slug, ())):
            return None
        return f"{self.root}feature/{slug}/{n}.html"


class Site:
    """Page builders over a `queries.Reader`; `exported` is None live, or the feature pages an export writes."""

    def __init__(self, exported: dict[str, set[int]] | None = None):
        self.exported = exported
        self.steer_model: str | None = None
        """The model the steer page samples with (saekit browse --model); None: the page explains how to start one."""
        self.memo: dict[str, Any] = {}
        self.env = Environment(loader=PackageLoader("saekit.browse"), autoescape=select_autoescape(default=True),
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters["num"] = _num
        self.env.filters["pct"] = lambda x: "-" if x is None else f"{100 * x:.1f}%"
        self.env.filters["zip_lens"] = lambda tokens, logits: list(zip(tokens or [], logits or []))
        self.env.filters["fromjson"] = lambda s: json.loads(s) if isinstance(s, str) else s

    @property
    def static(self) -> bool:
        return self.exported is not None

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """Facts shared by many pages, kept until the server sees the file change (it clears memo)."""
        value = self.memo.get(key, _MISSING)
        if value is _MISSING:
            value = self.memo[key] = build()
        return value

    def saes(self, r: B.Reader) -> list[Q.Sae]:
        return self.cached("saes", lambda: Q.saes(r))

    def html(self, r: B.Reader | None, page: Page, banner: str | None = None) -> str:
        root = "../" * page.depth
        slugs = {s.sae_id: s.slug for s in self.saes(r)} if r is not None else {}
        return self.env.get_template(page.template).render(
            page.ctx, title=page.title, root=root, links=Links(root, slugs, self.exported), static=self.static,
            banner=banner, steer_model=self.steer_model)

    # ------------------------------------------------------------------ pages

    def home(self, r: B.Reader) -> Page:
        saes = self.saes(r)
        top = {s.sae_id: _group(B.top_features(r, s.sae_id, HOME_TOP), "emotion") for s in saes}
        return Page("home.html", 0, "saekit feature browser", {
            **B.overview(r), "saes": saes, "emotions": self.emotions(r), "top": top,
            "pca": self.cached("pca", lambda: _pca_plot(B.vectors(r))),
            "style": self.cached("style", lambda: _style_tables(B.style_geometry(r)))})

    def emotions(self, r: B.Reader) -> list[dict[str, Any]]:
        return self.cached("emotions", lambda: B.emotions(r))

    def emotion(self, r: B.Reader, name: str) -> Page:
        known = {e["emotion"]: e for e in self.emotions(r)}
        if name not in known:
            raise NotFound(f"no emotion {name!r} in this database; known: {', '.join(sorted(known)) or 'none'}")
        saes = self.saes(r)
        probes = [dict(p, row=_confusion_row(p, name)) for p in self.cached("probes", lambda: B.probes(r))]
        return Page("emotion.html", 1, name, {
            "e": known[name], "saes": saes,
            "top": {s.sae_id: B.top_features(r, s.sae_id, TOP_FEATURES, name) for s in saes},
            "stat_columns": St.browser_columns(),
            "vectors": B.vectors(r, name), "lens_checks": B.lens_checks(r, name),
            "aligned": _group(B.aligned_features(r, name, TOP_ALIGNED), "sae_id"), "probes": probes})

    def feature(self, r: B.Reader, slug: str, n: int) -> Page:
        sae = next((s for s in self.saes(r) if s.slug == slug), None)
        if sae is None:
            raise NotFound(f"no SAE {slug!r}; this database has {', '.join(s.slug for s in self.saes(r))}")
        row = B.feature(r, sae.sae_id, n)
        if row is None:
            raise NotFound(f"no feature {n} in SAE {sae.sae_id} (features 0 to {sae.d_sae - 1})")
        stats = B.feature_stats(r, sae.sae_id, n)
        examples = _group(B.examples(r, sae.sae_id, n), "kind")
        scale = row["max_activation"] or max((max(e["token_activations"] or [0]) for k in examples.values() for e in k),
                                             default=0) or 1.0
        specs = self.cached(f"specs:{sae.sae_id}", lambda: B.experiment_specs(r, sae.sae_id))
        return Page("feature.html", 2, f"feature {n}", {
            "sae": sae, "n": n, "f": row, "stats": stats, "best": sorted(stats, key=lambda s: -s["auroc"])[:5],
            "bars": _bar_plot(stats, n), "hist": _hist_plot(row["hist_counts"] or []),
            "examples": {k: [_tokens(e, scale) for e in v] for k, v in examples.items()}, "scale": scale,
            "emotion_names": {e["emotion"] for e in self.emotions(r)}, "aligned": B.feature_alignment(r, sae.sae_id, n),
            "uses": Q.experiment_uses(specs, n), "nav": self._neighbours(sae, n)})

    def _neighbours(self, sae: Q.Sae, n: int) -> dict[str, Any]:
        """Previous and next feature pages, and the numbers the jump box may reach (None: all)."""
        if self.exported is None:
            return {"prev": n - 1 if n > 0 else None, "next": n + 1 if n + 1 < sae.d_sae else None, "allowed": None}
        have = sorted(self.exported.get(sae.slug, ()))
        i = have.index(n)
        return {"prev": have[i - 1] if i else None, "next": have[i + 1] if i + 1 < len(have) else None,
                "allowed": have}

    def steer(self, r: B.Reader, emotion: str | None, slug: str | None, feature: str | None,
              hook: str | None) -> Page:
        """The steer page for an emotion's vector or a feature (its decoder direction, a clamp, an ablation)."""
        from saekit.browse.steer import KINDS_ON_PAGE, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, MAX_STRENGTH, NO_MODEL

        known = {e["emotion"] for e in self.emotions(r)}
        if emotion is not None and emotion not in known:
            raise NotFound(f"no emotion {emotion!r} in this database; known: {', '.join(sorted(known)) or 'none'}")
        n = None
        if feature is not None:
            saes = self.saes(r)
            sae = next((s for s in saes if s.slug == slug), None) if slug else (saes[0] if saes else None)
            if sae is None or not feature.isdigit() or not 0 <= int(feature) < sae.d_sae:
                raise NotFound(f"no feature {feature!r} in SAE {slug or '(none)'}")
            n = int(feature)
        if emotion is None and n is None:
            raise NotFound("the steer page needs an emotion (?emotion=calm) or a feature (?sae=SLUG&feature=N)")
        title = f"steer: {emotion}" if emotion is not None else f"steer: feature {n}"
        return Page("steer.html", 0, title, {
            "emotion": emotion, "feature": n, "kinds": [k for k in KINDS_ON_PAGE if (k == "steer") == (emotion is not None)],
            "hook": hook, "no_model": NO_MODEL, "limits": {"tokens": MAX_NEW_TOKENS, "prompt": MAX_PROMPT_TOKENS,
                                                          "strength": MAX_STRENGTH}})

    def experiments(self, r: B.Reader) -> Page:
        return Page("experiments.html", 0, "experiments", {"experiments": self.cached(
            "experiments", lambda: [_experiment(r, e) for e in B.experiment_specs(r)])})

    def search(self, r: B.Reader) -> Page:
        return Page("search.html", 0, "search", {})

    def search_index(self, r: B.Reader) -> str:
        """The search page's data as a script: emotions and each feature's promoted tokens."""
        def build() -> str:
            feats = {}
            for s in self.saes(r):
                keep = self.exported.get(s.slug, set()) if self.exported is not None else None
                feats[s.slug] = [[x["feature"], [t.strip() for t in x["promoted_tokens"] or []]]
                                 for x in B.search_rows(r, s.sae_id) if keep is None or x["feature"] in keep]
            data = {"emotions": [e["emotion"] for e in self.emotions(r)],
                    "saes": [{"slug": s.slug, "sae_id": s.sae_id, "d_sae": s.d_sae} for s in self.saes(r)],
                    "features": feats, "static": self.static}
            return "window.SAEKIT_SEARCH = " + json.dumps(data).replace("<", "\\u003c") + ";\n"
        return self.cached("search_index", build)

    def message(self, title: str, text: str, status: int, depth: int = 0) -> Page:
        return Page("message.html", depth, title, {"text": text}, status)


# ---------------------------------------------------------------------------- helpers


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{digits}f}"


def _group(rows: list[dict], key: str) -> dict[Any, list[dict]]:
    out: dict[Any, list[dict]] = {}
    for row in rows:
        out.setdefault(row[key], []).append(row)
    return out


def _confusion_row(p: dict[str, Any], emotion: str) -> dict[str, Any] | None:
    """This emotion's row of a probe's confusion matrix: where its test stories went."""
    if emotion not in p["emotions"]:
        return None
    counts = p["confusion"][p["emotions"].index(emotion)]
    cells = sorted(((e, c) for e, c in zip(p["emotions"], counts) if c), key=lambda x: -x[1])
    return {"precision": p["precision"].get(emotion), "recall": p["recall"].get(emotion),
            "total": sum(counts), "cells": cells}


def _tokens(example: dict[str, Any], scale: float) -> dict[str, Any]:
    """An example's tokens with the opacity of each one's highlight: activation / the feature's max."""
    acts = example["token_activations"] or []
    toks = [(t, a, min(max(a / scale, 0.0), 1.0)) for t, a in zip(example["tokens"] or [], acts)]
    return dict(example, toks=toks)


def _plot(data: list[dict], **layout: Any) -> dict[str, Any]:
    """A plotly figure as data: browse.js draws it with the plotly.js that plotly's package ships."""
    base = {"margin": {"l": 50, "r": 10, "t": 30, "b": 80}, "height": 320, "font": {"size": 11}}
    return {"data": data, "layout": {**base, **layout}}


def _bar_plot(stats: list[dict], n: int) -> dict[str, Any]:
    return _plot([{"type": "bar", "x": [s["emotion"] for s in stats], "y": [s["auroc"] for s in stats],
                   "customdata": [f"emotion/{quote(s['emotion'], safe='')}.html" for s in stats],
                   "hovertext": [f"d = {_num(s['cohens_d'])}, q = {_num(s['q_value'])}, rank {s['selectivity_rank']}"
                            for s in stats],
                   "hovertemplate": "%{x}: AUROC %{y:.3f}<br>%{hovertext}<extra></extra>",
                   "marker": {"color": ["#c0392b" if s["auroc"] >= 0.5 else "#7f8c8d" for s in stats]}}],
                 title={"text": f"feature {n}: AUROC for each emotion (one vs rest)"},
                 yaxis={"range": [0, 1], "title": {"text": "AUROC"}},
                 shapes=[{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 0.5, "y1": 0.5,
                          "line": {"dash": "dot", "color": "#555"}}])


def _hist_plot(counts: list[int]) -> dict[str, Any]:
    """Counts per log2 bin (saekit.evidence's bins), leading and trailing empty bins dropped."""
    edges = hist_edges()
    labels = [f"≤ {edges[0]:g}"] + [f"{lo:g}–{hi:g}" for lo, hi in zip(edges[:-2], edges[1:-1])] + [f"> {edges[-2]:g}"]
    used = [i for i, c in enumerate(counts) if c]
    lo, hi = (used[0], used[-1] + 1) if used else (0, 0)
    return _plot([{"type": "bar", "x": labels[lo:hi], "y": counts[lo:hi], "marker": {"color": "#2c7fb8"},
                   "hovertemplate": "activation %{x}: %{y} tokens<extra></extra>"}],
                 title={"text": "activation histogram over counted tokens where it is active"},
                 xaxis={"title": {"text": "activation (log2 bins)"}, "type": "category"},
                 yaxis={"title": {"text": "tokens"}})


def _style_tables(rows: list[dict]) -> list[dict[str, Any]]:
    """Per model, corpus and hook: the PCs x statistics grid of r, and the warnings (saekit corpus check)."""
    from saekit.corpus_style import style_warnings

    out = []
    for key in dict.fromkeys((r["model_id"], r["corpus_id"], r["hook"]) for r in rows):
        mine = [r for r in rows if (r["model_id"], r["corpus_id"], r["hook"]) == key]
        pcs = list(dict.fromkeys(r["predictor"] for r in mine))
        by = {(r["target"], r["predictor"]): r["r"] for r in mine}
        targets = list(dict.fromkeys(r["target"] for r in mine))
        out.append({"model_id": key[0], "corpus_id": key[1], "hook": key[2],
                    "pcs": [(pc, next(r["explained_variance"] for r in mine if r["predictor"] == pc)) for pc in pcs],
                    "grid": [(t, [by.get((t, pc)) for pc in pcs]) for t in targets],
                    "warnings": style_warnings([dict(r, r=float("nan") if r["r"] is None else r["r"],
                                                     p_value=1.0 if r["p_value"] is None else r["p_value"])
                                                for r in mine])})
    return out


def _pca_plot(vectors: list[dict]) -> dict[str, Any] | None:
    """The emotion vectors of the deepest hook on their first two principal components."""
    if not vectors:
        return None
    hook = max({v["hook"] for v in vectors}, key=lambda h: (-1 if hook_layer(h) is None else hook_layer(h), h))
    vs = [v for v in vectors if v["hook"] == hook]
    if len(vs) < 3:
        return None
    x = np.asarray([v["vector"] for v in vs], dtype=np.float64)
    x -= x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    xy, share = u[:, :2] * s[:2], s[:2] ** 2 / max((s ** 2).sum(), 1e-30)
    return _plot([{"type": "scatter", "mode": "markers+text", "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(),
                   "text": [v["emotion"] for v in vs], "textposition": "top center",
                   "customdata": [f"emotion/{quote(v['emotion'], safe='')}.html" for v in vs],
                   "hovertemplate": "%{text}<extra></extra>", "marker": {"size": 9, "color": "#8e44ad"}}],
                 title={"text": f"emotion vectors at {hook}: PCA (click an emotion)"}, height=460,
                 xaxis={"title": {"text": f"PC1 ({100 * share[0]:.0f}% of variance)"}},
                 yaxis={"title": {"text": f"PC2 ({100 * share[1]:.0f}% of variance)"}})


def _experiment(r: B.Reader, spec_row: dict[str, Any]) -> dict[str, Any]:
    """One experiment as its task presents it: the report's own table, the task's interactive figures
    (with the browser's house layout), and its generations."""
    from saekit.experiments import summary as S

    exp, data = S.load_experiment(spec_row["experiment_id"], r.db)
    task = S.task_of(exp)
    columns, rows, _notes, stats = task.summarize(exp, data)
    figures = [_plot(f["data"], **f.get("layout", {})) for f in task.figures(exp, stats)]
    gfile = exp["spec"].get("generations_file")
    gens = [json.loads(line) for line in Path(gfile).read_text().splitlines() if line.strip()] \
        if gfile and Path(gfile).is_file() else []
    return dict(exp, task=task.name, columns=columns, rows=rows, figures=figures, generations=gens)
