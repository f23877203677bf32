"""The study report: one self-contained HTML file (figures embedded) plus each figure as PNG.

Everything is read back from the feature database and the study folder, so the report shows
what was stored. Each figure carries one sentence written from its numbers.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from saekit import features as Fe  # noqa: E402
from saekit.corpus import POSITIVE_CLUSTERS, emotion_table  # noqa: E402
from saekit.db import Database, corpus_id_of, sae_id_of  # noqa: E402
from saekit.db import features as DF  # noqa: E402
from saekit.db import summaries as DR  # noqa: E402
from saekit.experiments.tasks import TASKS  # noqa: E402
from saekit.experiments.tasks.task import base_model_label  # noqa: E402
from saekit.rank import read_ratings  # noqa: E402


class Figure:
    def __init__(self, name: str, title: str, fig, sentence: str):
        self.name, self.title, self.fig, self.sentence = name, title, fig, sentence

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(self.fig)
        return buf.getvalue()


def sae_quality(db: Database, sae_id: str) -> Figure | None:
    r = DF.sae(db, sae_id)
    if r is None:
        return None
    names = ["explained_variance", "mean_l0", "dead_fraction", "dense_fraction", "ce_loss_recovered", "kl_divergence"]
    vals = [r.get(n) for n in names]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.axis("off")
    ax.table(cellText=[[n.replace("_", " "), "n/a" if v is None else f"{v:.4g}"] for n, v in zip(names, vals)],
             colLabels=["metric", "value"], loc="center", cellLoc="left")
    ev, l0, rec = r.get("explained_variance"), r.get("mean_l0"), r.get("ce_loss_recovered")
    rule = json.loads(str(r["token_rule"]))["description"] if r.get("token_rule") else "not recorded"
    sentence = (f"The SAE ({r['architecture']}, {r['d_sae']} features at {r['hook']}) explains "
                f"{_pct(ev)} of held-out activation variance with {_num(l0)} active features per token, "
                f"{_pct(r.get('dead_fraction'))} of its features never firing on held-out tokens; "
                f"spliced into the model it recovers {_pct(rec)} of the language-model loss "
                f"(KL {_num(r.get('kl_divergence'))} nats/token). Every statistic in this report counts the "
                f"same tokens ({rule}): {_count(r.get('counted_tokens'))} corpus tokens counted, "
                f"{_count(r.get('dropped_tokens'))} left out.")
    return Figure("sae_quality", "SAE quality", fig, sentence)


def selectivity_heatmap(db: Database, sae_id: str, corpus_id: str) -> tuple[Figure, list[DF.FeatureStat]]:
    stats = DF.top_stats(db, sae_id, corpus_id, max_rank=2)
    emotions = sorted({s["emotion"] for s in stats})
    feats = list(dict.fromkeys(s["feature"] for s in stats))
    d = DF.cohens_d(db, sae_id, corpus_id, feats)
    grid = torch.zeros(len(emotions), len(feats))
    for row in d:
        grid[emotions.index(row["emotion"]), feats.index(row["feature"])] = row["cohens_d"] or 0
    fig, ax = plt.subplots(figsize=(min(18, 2 + 0.22 * len(feats)), 1 + 0.25 * len(emotions)))
    lim = float(grid.abs().max()) or 1.0
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(len(emotions)), emotions, fontsize=7)
    ax.set_xticks(range(len(feats)), [str(f) for f in feats], fontsize=6, rotation=90)
    ax.set_xlabel("feature (the two most selective per emotion)")
    fig.colorbar(im, ax=ax, label="Cohen's d (emotion vs other emotions)")
    best = [s for s in stats if s["selectivity_rank"] == 1]
    strong = [s for s in best if s["q_value"] < 0.05 and s["auroc"] >= 0.8]
    top = max(best, key=lambda s: s["auroc"]) if best else None
    sentence = (f"{len(strong)} of {len(emotions)} emotions have a feature with AUROC >= 0.8 and BH q < 0.05 on the "
                f"train split" + (f"; the most selective is feature {top['feature']} for {top['emotion']} "
                                  f"(AUROC {top['auroc']:.2f}, d {top['cohens_d']:.2f})." if top else "."))
    return Figure("selectivity_heatmap", "Feature x emotion selectivity", fig, sentence), best


def top_feature_table(db: Database, sae_id: str, corpus_id: str, best: list[DF.FeatureStat]) -> tuple[str, str]:
    """The most selective feature per emotion with the evidence for it, and a sentence on that evidence."""
    rows, precisions = [], []
    for b in best:
        f = b["feature"]
        lens = DF.feature_lens(db, sae_id, f)
        ex = DF.story_examples(db, sae_id, corpus_id, f)
        p = DF.top_story_precision(db, sae_id, corpus_id, f, b["emotion"])
        p = float("nan") if p is None else p
        precisions.append(p)
        promoted = ", ".join(f"{t!r} {v:+.1f}" for t, v in zip((lens["promoted_tokens"] or [])[:5],
                                                                  (lens["promoted_logits"] or [])[:5])) if lens else ""
        examples = "<br>".join(f"<b>{html.escape(e['story_id'])}</b> [{html.escape(e['emotion'] or '')}] "
                               f"(mean {e['activation']:.2f}): {highlight(e['tokens'], e['token_activations'])}"
                               for e in ex[:2])
        outside = "<br>".join(f"<b>{html.escape(e['story_id'])}</b> (peak {e['activation']:.2f}): "
                              f"{highlight(e['tokens'], e['token_activations'])}"
                              for e in DF.outside_examples(db, sae_id, f)[:2]) or "<i>none</i>"
        rows.append(f"<tr><td>{html.escape(b['emotion'])}</td><td>{f}</td><td>{b['auroc']:.3f}</td>"
                    f"<td>{b['cohens_d']:.2f}</td><td>{b['q_value']:.2g}</td><td>{p:.0%} of {len(ex)}</td>"
                    f"<td>{html.escape(promoted)}</td><td>{examples}</td><td>{outside}</td></tr>")
    table = ("<table><tr><th>emotion</th><th>feature</th><th>AUROC</th><th>d</th><th>q</th>"
             "<th>top stories from the emotion</th><th>logit lens: promotes (logit)</th>"
             "<th>top stories by pooled mean (window around the peak; shade = activation, hover for the value)</th>"
             "<th>top passages from outside text (held-out chats and Wikipedia openings the SAE never trained on; "
             "window around the peak)</th></tr>" + "".join(rows) + "</table>")
    good = sum(p >= 0.6 for p in precisions)
    median = float(torch.tensor(precisions).nanmedian()) if precisions else float("nan")
    sentence = (f"Examples are the stories with the highest pooled activation, the statistic selectivity is ranked "
                f"on: for {good} of {len(best)} emotions at least 60% of the top feature's top stories carry that "
                f"emotion (median {median:.0%}; chance about {1 / max(len(best), 1):.0%}).")
    return table, sentence


def highlight(tokens: list[str] | None, values: list[float] | None) -> str:
    """Tokens as HTML spans shaded by activation, each with its value on hover."""
    if not tokens:
        return ""
    top = max(max(values or [0.0]), 1e-9)
    return "".join(f'<span title="{v:.3g}" style="background:rgba(255,140,0,{max(v, 0) / top:.2f})">'
                   f"{html.escape(t)}</span>" for t, v in zip(tokens, values or []))


def lens_check_table(db: Database, model_id: str, corpus_id: str) -> tuple[str, str] | None:
    """The paper's logit-lens check per hook and direction kind, next to random directions of equal norm."""
    rows = DR.lens_check_summary(db, model_id, corpus_id)
    if not rows:
        return None
    body = "".join(f"<tr><td>{html.escape(r['direction'])}</td><td>{html.escape(r['hook'])}</td>"
                   f"<td>{r['hits']} of {r['n']}</td><td>{r['rnd']:.1f}</td><td>{r['p']:.3f}</td>"
                   f"<td>{html.escape(r['found'] or 'none')}</td></tr>" for r in rows)
    table = ("<table><tr><th>direction</th><th>hook</th><th>own word in top</th><th>random directions (mean)</th>"
             "<th>p</th><th>emotions whose word is promoted (token, rank)</th></tr>" + body + "</table>")
    best = max(rows, key=lambda r: r["hits"] - r["rnd"])
    sentence = (f"Does an emotion's direction promote its own word (any form) among its top {best['top']} tokens? "
                f"Best: {best['direction']} at {best['hook']}, {best['hits']} of {best['n']} emotions against "
                f"{best['rnd']:.1f} expected from random directions of equal norm (p = {best['p']:.3f})"
                + ("; read as no evidence." if best["p"] >= 0.05 else "."))
    return table, sentence


def vector_geometry(db: Database, model_id: str, corpus_id: str, hook: str, ratings: dict) -> list[Figure]:
    rows = DF.emotion_vectors(db, model_id, corpus_id, hook)
    if len(rows) < 3:
        return []
    emotions = [r.emotion for r in rows]
    vecs = torch.tensor([r.vector for r in rows])
    scores, ratio = Fe.pca(vecs, 2)
    clusters = emotion_table()
    rated = [i for i, e in enumerate(emotions) if e in ratings]
    fig, ax = plt.subplots(figsize=(7, 6))
    if len(rated) >= 3:
        val = torch.tensor([ratings[emotions[i]][0] for i in rated])
        r1 = Fe.pearson(scores[rated, 0], val)
        aro = torch.tensor([ratings[emotions[i]][1] for i in rated])
        r2 = Fe.pearson(scores[rated, 1], aro)
        colour = [ratings.get(e, (float("nan"), 0))[0] for e in emotions]
        sc = ax.scatter(scores[:, 0], scores[:, 1], c=colour, cmap="coolwarm")
        fig.colorbar(sc, ax=ax, label="human valence rating")
        sentence = (f"PC1 ({ratio[0]:.0%} of variance) correlates with human valence at r = {r1:.2f} and PC2 "
                    f"({ratio[1]:.0%}) with arousal at r = {r2:.2f} over {len(rated)} rated emotions "
                    f"(the paper: 0.81 and 0.66; signs of PCs are arbitrary).")
    else:
        sign = torch.tensor([1.0 if clusters.get(e, {}).get("cluster") in POSITIVE_CLUSTERS else -1.0 for e in emotions])
        r1, r2 = Fe.pearson(scores[:, 0], sign), Fe.pearson(scores[:, 1], sign)
        ax.scatter(scores[:, 0], scores[:, 1], c=["tab:orange" if s > 0 else "tab:blue" for s in sign])
        sentence = (f"Correlation with the paper's positive (orange) vs negative (blue) clusters: PC1 "
                    f"({ratio[0]:.0%} of variance) r = {r1:.2f}, PC2 ({ratio[1]:.0%}) r = {r2:.2f} (signs of PCs are "
                    "arbitrary). No human ratings file was given, so the valence/arousal correlations were not "
                    "computed (see README).")
    for i, e in enumerate(emotions):
        ax.annotate(e, (float(scores[i, 0]), float(scores[i, 1])), fontsize=7)
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
    pca_fig = Figure("vector_pca", f"Emotion vectors at {hook}: PCA", fig, sentence)

    from scipy.cluster.hierarchy import dendrogram

    link = DF.linkage(db, model_id, corpus_id, hook) or Fe.hierarchical(vecs)   # databases before the geometry tables
    fig, ax = plt.subplots(figsize=(9, 4))
    dendrogram(link, labels=emotions, ax=ax, leaf_rotation=90, leaf_font_size=8)
    first = link[0]
    a, b = emotions[int(first[0])], emotions[int(first[1])]
    stored = DF.similarity(db, model_id, corpus_id, hook, emotions)
    sims = torch.tensor(stored) if stored else Fe.cosine_matrix(vecs, vecs)
    same_cluster = [sims[i, j] for i in range(len(emotions)) for j in range(i + 1, len(emotions))
                    if clusters.get(emotions[i], {}).get("cluster") == clusters.get(emotions[j], {}).get("cluster")]
    other = [sims[i, j] for i in range(len(emotions)) for j in range(i + 1, len(emotions))
             if clusters.get(emotions[i], {}).get("cluster") != clusters.get(emotions[j], {}).get("cluster")]
    mean = lambda xs: float(torch.stack(xs).mean()) if xs else float("nan")  # noqa: E731
    sentence = (f"The closest pair is {a} and {b} (cosine distance {first[2]:.2f}); vectors of emotions in the same "
                f"paper cluster have mean cosine {mean(same_cluster):.2f}, against {mean(other):.2f} across clusters.")
    return [pca_fig, Figure("vector_dendrogram", "Emotion vectors: hierarchical clusters", fig, sentence)]


def style_geometry_table(db: Database, model_id: str, corpus_id: str, hook: str) -> tuple[str, str] | None:
    """The vectors' PCs at `hook` against the corpus's style statistics and valence, and the warnings."""
    from saekit.corpus_style import style_warnings

    rows = DR.style_geometry(db, model_id, corpus_id, hook)
    if not rows:
        return None
    pcs = list(dict.fromkeys(r["predictor"] for r in rows))
    var = {r["predictor"]: r["explained_variance"] for r in rows}
    by = {(r["target"], r["predictor"]): r for r in rows}
    body = "".join(f"<tr><td>{html.escape(t)}</td>" + "".join(f"<td>{_r(by.get((t, pc)))}</td>" for pc in pcs) + "</tr>"
                   for t in dict.fromkeys(r["target"] for r in rows))
    head = "".join(f"<th>{pc} ({100 * (var[pc] or 0):.0f}%) r</th>" for pc in pcs)
    table = f"<table><tr><th>per-emotion statistic</th>{head}</tr>{body}</table>"
    warned = style_warnings([dict(r, r=float("nan") if r["r"] is None else r["r"],
                                  p_value=1.0 if r["p_value"] is None else r["p_value"]) for r in rows])
    sentence = (f"At {hook}, each principal component of the emotion vectors is correlated over the emotions with how "
                "their train stories are written (body-part words, quoted speech, cognition verbs, length, narration; "
                "saekit corpus check) and with valence. ")
    sentence += (" ".join(f"Warning: {w}." for w in warned) if warned else
                 "No style statistic tracks a component more closely than valence does (p < 0.05).")
    return table, sentence


def rating_geometry_table(db: Database, model_id: str, corpus_id: str, hook: str) -> tuple[str, str] | None:
    """Valence and arousal against PCs 1-5 and their leave-one-out decoding, per hook; a sentence for `hook`."""
    rows = DR.rating_geometry(db, model_id, corpus_id)
    if not rows:
        return None
    pcs = sorted({r["predictor"] for r in rows if r["predictor"].startswith("PC")})
    by = {(r["hook"], r["target"], r["predictor"]): r for r in rows}
    body = []
    for h, target in dict.fromkeys((r["hook"], r["target"]) for r in rows):
        cells = "".join(f"<td>{_r(by.get((h, target, pc)))}</td>" for pc in pcs)
        loo = by.get((h, target, "loo_ridge"))
        body.append(f"<tr><td>{html.escape(h)}</td><td>{target}</td>{cells}<td>{_r(loo, ci=True)}</td>"
                    f"<td>{_num(loo['r2']) if loo else 'n/a'}</td><td>{rows[0]['n']}</td></tr>")
    head = "".join(f"<th>{pc} r</th>" for pc in pcs)
    table = (f"<table><tr><th>hook</th><th>rating</th>{head}<th>leave-one-out decoding r [95% CI]</th>"
             f"<th>R&sup2;</th><th>rated emotions</th></tr>" + "".join(body) + "</table>")
    at = hook if any(r["hook"] == hook for r in rows) else rows[-1]["hook"]
    parts = []
    for target in ("valence", "arousal"):
        mine = [r for r in rows if r["hook"] == at and r["target"] == target]
        ranked = sorted((r for r in mine if r["predictor"].startswith("PC") and r["r"] is not None),
                        key=lambda r: -abs(r["r"] or 0.0))
        if not ranked:
            continue
        best = ranked[0]
        text = f"{target} is best aligned with {best['predictor']} (r = {best['r']:.2f}, p = {best['p_value']:.2g})"
        pc1 = by.get((at, target, "PC1"))
        if best["predictor"] != "PC1" and pc1 and pc1["r"] is not None:
            text += f", not PC1 (r = {pc1['r']:.2f})"
        loo = by.get((at, target, "loo_ridge"))
        if loo and loo["r"] is not None:
            text += (f"; decoded leave-one-out from the vectors, r = {loo['r']:.2f} and R² = {loo['r2']:.2f}")
        parts.append(text)
    sentence = (f"At {at}, over {mine[0]['n'] if mine else 0} rated emotions: " + "; ".join(parts) +
                ". Signs of PCs are arbitrary; the paper found valence on PC1 (r = 0.81) and arousal on PC2 (0.66).")
    return table, sentence


def _r(row, ci: bool = False) -> str:
    if row is None or row["r"] is None:
        return "n/a"
    out = f"{row['r']:+.2f}"
    if ci and row["ci_lo"] is not None:
        out += f" [{row['ci_lo']:+.2f}, {row['ci_hi']:+.2f}]"
    return out + (f" (p {row['p_value']:.2g})" if row["p_value"] is not None and not ci else "")


EVAL_METHODS = {"vector_eval": "emotion-vector projection", "sae_eval": "SAE top-feature logistic"}
CENTRING = {"train_mean": "train stories' mean", "eval_neutral_mean": "its neutral texts' mean"}


def beyond_the_corpus(db: Database, corpus_id: str) -> tuple[str, str] | None:
    """The probes built on this corpus scored on other labelled corpora (`saekit rank --eval-corpus`)."""
    rows = DR.eval_probes(db, corpus_id)
    if not rows:
        return None
    body = "".join(
        f"<tr><td>{html.escape(r['eval_corpus'])}</td><td>{EVAL_METHODS.get(r['method'], r['method'])}</td>"
        f"<td>{html.escape(r['hook'])}</td><td>{r['accuracy']:.3f} [{_num(r['ci_lo'])}, {_num(r['ci_hi'])}]</td>"
        f"<td>{r['chance']:.3f}</td><td>{r['n_test']}</td><td>{CENTRING.get(r['centring'] or '', 'n/a')}</td></tr>"
        for r in rows)
    table = ("<table><tr><th>eval corpus</th><th>probe</th><th>hook</th><th>accuracy [95% CI]</th><th>chance</th>"
             "<th>texts</th><th>centred on</th></tr>" + body + "</table>")
    sentences = []
    for corpus in dict.fromkeys(r["eval_corpus"] for r in rows):
        mine = [r for r in rows if r["eval_corpus"] == corpus]
        best = max((r for r in mine if r["method"] == "vector_eval"), key=lambda r: r["accuracy"], default=None)
        sae = next((r for r in mine if r["method"] == "sae_eval"), None)
        said = [f"{EVAL_METHODS[r['method']]} at {r['hook']} {r['accuracy']:.2f} [{_num(r['ci_lo'])}, "
                f"{_num(r['ci_hi'])}]" for r in (best, sae) if r is not None]
        unknown = json.loads(mine[0]["unknown_emotions"] or "{}")
        sentences.append(
            f"On {corpus} ({mine[0]['n_test']} texts of the study's emotions, chance {mine[0]['chance']:.3f}), the "
            f"probes built on this corpus's train stories reach: {'; '.join(said)}"
            + (f" (vectors centred on {CENTRING[best['centring']]})" if best and best["centring"] in CENTRING else "")
            + (". Emotions it names that the study lacks, not scored: "
               + ", ".join(f"{e} ({n} text{'' if n == 1 else 's'})" for e, n in unknown.items()) + "." if unknown else "."))
    return table, " ".join(sentences)


def probe_accuracy(db: Database, corpus_id: str) -> Figure | None:
    rows = DR.latest_probes(db, corpus_id)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = [f"{r['method']}\n{r['hook'].replace('.hook_resid_post', '')}" for r in rows]
    ax.bar(range(len(rows)), [r["accuracy"] for r in rows],
           color=["tab:green" if r["method"].startswith("sae") else "tab:purple" for r in rows])
    ax.axhline(rows[0]["chance"], color="k", ls="--", label=f"chance {rows[0]['chance']:.3f}")
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("held-out accuracy")
    ax.legend()
    best = max(rows, key=lambda r: r["accuracy"])
    sae_probes = [r for r in rows if r["method"].startswith("sae")]
    sentence = (f"On the test split, the best probe is {best['method']} at {best['hook']} with accuracy "
                f"{best['accuracy']:.2f} (chance {best['chance']:.3f})" +
                (f"; the SAE's top selective features reach {sae_probes[0]['accuracy']:.2f}." if sae_probes else "."))
    return Figure("probe_accuracy", "Held-out emotion classification: SAE features vs emotion vectors", fig, sentence)


def write_report(cfg, out: Path, progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Write <out>/report.html and <out>/figures/*.png from the database and the study folder."""
    tick: Callable[..., None] = progress or (lambda f, note="": None)
    out = Path(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    ratings = read_ratings(cfg.ratings or None)
    manifest = json.loads((out / "activations" / "manifest.json").read_text())
    model_id, corpus_id = manifest["model"], corpus_id_of(manifest["config"].get("corpus"))
    sae_id = sae_id_of(cfg.sae, cfg.sae_id) if cfg.sae else sae_id_of(out / "sae")
    sections: list[tuple[str, Any]] = []
    with Database(cfg.db, read_only=True) as db:
        tick(0.1, "SAE quality")
        if (f := sae_quality(db, sae_id)) is not None:
            sections.append(("figure", f))
        tick(0.3, "selectivity")
        heat, best = selectivity_heatmap(db, sae_id, corpus_id)
        sections.append(("figure", heat))
        table, sentence = top_feature_table(db, sae_id, corpus_id, best)
        sections.append(("html", ("Top feature per emotion", f"<p>{html.escape(sentence)}</p>{table}")))
        if (lens := lens_check_table(db, model_id, corpus_id)) is not None:
            sections.append(("html", ("Logit lens: do the directions promote the emotion's own word?",
                                      f"<p>{html.escape(lens[1])}</p>{lens[0]}")))
        tick(0.5, "geometry")
        for f in vector_geometry(db, model_id, corpus_id, cfg.hook, ratings):
            sections.append(("figure", f))
        if (styled := style_geometry_table(db, model_id, corpus_id, cfg.hook)) is not None:
            sections.append(("html", ("Style or emotion? The vectors' principal components against the stories' style",
                                      f"<p>{html.escape(styled[1])}</p>{styled[0]}")))
        if (rated := rating_geometry_table(db, model_id, corpus_id, cfg.hook)) is not None:
            sections.append(("html", ("Emotion vectors against human ratings",
                                      f"<p>{html.escape(rated[1])}</p>{rated[0]}")))
        if (f := probe_accuracy(db, corpus_id)) is not None:
            sections.append(("figure", f))
        if (beyond := beyond_the_corpus(db, corpus_id)) is not None:
            sections.append(("html", ("Beyond the corpus", f"<p>{html.escape(beyond[1])}</p>{beyond[0]}")))
    tick(0.7, "experiments")
    for path in sorted((out / "experiments").glob("*.json")) if (out / "experiments").exists() else []:
        summary = json.loads(path.read_text())
        task = TASKS.get(summary.get("task", ""))
        label = base_model_label(task, model_id) if task is not None else None
        name = f"{path.stem} (base model)" if label else path.stem
        for png in summary.get("figures", []):
            if Path(png).exists():
                title = f"Experiment {name}: {Path(png).stem.replace('_', ' ')}"
                sentence = summary.get("sentences", {}).get(Path(png).name, "")
                sections.append(("png", (title, Path(png), f"{label[0].upper()}{label[1:]}. {sentence}" if label else sentence)))
        if summary.get("table_html"):
            note = f"<p><em>{html.escape(label[0].upper() + label[1:])}.</em></p>" if label else ""
            sections.append(("html", (f"Experiment {name}", note + summary["table_html"])))
    pngs, body = [], []
    for kind, item in sections:
        if kind == "figure":
            data = item.png()
            p = figdir / f"{item.name}.png"
            p.write_bytes(data)
            pngs.append(p)
            body.append(_figure_html(item.title, data, item.sentence))
        elif kind == "png":
            title, p, sentence = item
            pngs.append(p)
            body.append(_figure_html(title, p.read_bytes(), sentence))
        else:
            title, table = item
            body.append(f"<h2>{html.escape(title)}</h2>{table}")
    page = _PAGE.format(title=f"saekit emotion study: {html.escape(model_id)}", body="\n".join(body))
    (out / "report.html").write_text(page)
    tick(1.0, "done")
    return {"html": out / "report.html", "png": pngs}


def _figure_html(title: str, png: bytes, sentence: str) -> str:
    b64 = base64.b64encode(png).decode()
    return (f"<h2>{html.escape(title)}</h2><p>{html.escape(sentence)}</p>"
            f'<img src="data:image/png;base64,{b64}" alt="{html.escape(title)}">')


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _count(v) -> str:
    return "n/a" if v is None else f"{v:,}"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}}img{{max-width:100%}}
table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:3px 6px;vertical-align:top}}</style>
</head><body><h1>{title}</h1>
<p>Generated by saekit from the feature database. Effects are reported with confidence intervals next to
random controls; a small model may show none, and that is reported as it is.</p>
{body}</body></html>
"""
