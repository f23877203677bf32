"""A comparison's side-by-side table, its Markdown page and its figure (saekit compare's outputs).

One set of rows feeds the terminal table and compare.md; the figure shows the three cosine
matrices in one emotion order (side A's average-linkage leaves) and the metrics as bars.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from saekit.compare import LEXICAL_PROBE, PAIRS, CompareError, Comparison, SideResult

SIDE_KEYS = ("a", "b", "baseline")
PAIR_NAMES = {"a~b": "A ~ B", "a~b | baseline": "A ~ B, baseline partialled out", "a~baseline": "A ~ baseline",
              "b~baseline": "B ~ baseline"}
HEATMAP_LABELS_MAX = 40
"""Above this many emotions the heatmaps carry no tick labels (they would be unreadable)."""


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _probe(p: dict[str, Any] | None) -> str:
    if p is None:
        return "-"
    ci = f" [{_num(p['ci_lo'])}, {_num(p['ci_hi'])}]" if p.get("ci_lo") is not None else ""
    return f"{_num(p['accuracy'])}{ci}"


def best_probe(s: SideResult) -> dict[str, Any] | None:
    return max(s.probes, key=lambda p: p["accuracy"] or 0.0, default=None)


def side_rows(c: Comparison, tags_only: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per metric, one column per side (A, B, the lexical baseline); the header
    names each side by its tag and label, or (`tags_only`, for a terminal) by its tag alone."""
    sides = [c.sides[k] for k in SIDE_KEYS]
    header = ["metric", *(_tag(k) if tags_only else f"{_tag(k)}: {s.label}" for k, s in zip(SIDE_KEYS, sides))]
    rows: list[list[str]] = [["kind", *(s.kind for s in sides)],
                             ["dimensions", *(str(s.vectors_ED.shape[1]) for s in sides)]]
    methods = sorted({p["method"] for s in sides for p in s.probes} - {LEXICAL_PROBE}) + [LEXICAL_PROBE]
    for m in methods:
        rows.append([f"probe {m}", *(_probe(next((p for p in s.probes if p["method"] == m), None))
                                              for s in sides)])
    lexical = best_probe(c.sides["baseline"])
    rows.append(["best probe - lexical", *(
        _num(b["accuracy"] - lexical["accuracy"], 3) if (b := best_probe(s)) and lexical and s.kind != "lexical"
        else "-" for s in sides)])
    for j in range(5):
        rows.append([f"PC{j + 1} variance share", *(_num(s.explained_variance[j]) if j < len(s.explained_variance)
                                                    else "-" for s in sides)])
    rows.append(["RSA with baseline (p)",
                 *(_pair_cell(c.pairs.get(f"{k}~baseline"), "rsa") for k in ("a", "b")), "-"])
    rows.append([f"ARI with baseline (k {c.k})",
                 *(_num(c.pairs[f"{k}~baseline"]["ari"]) for k in ("a", "b")), "-"])
    for target in ("valence", "arousal"):
        rows.append([f"{target} r (LOO; best PC)", *(_rating(s.ratings.get(target)) for s in sides)])
    return header, rows


def pair_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """(header, rows): RSA (with its p-value) and ARI of each pair, and the partial RSA of A and B."""
    header = ["pair", "RSA Spearman", "p (permutation)", "ARI"]
    rows = []
    for key in ("a~b", "a~b | baseline", *(f"{x}~{y}" for x, y in PAIRS[1:])):
        p = c.pairs[key]
        rows.append([PAIR_NAMES[key], _num(p["rsa"]), _p(p["rsa_p"]), _num(p.get("ari"))])
    return header, rows


def _pair_cell(p: dict[str, Any] | None, key: str) -> str:
    return "-" if p is None else f"{_num(p[key])} (p {_p(p[key + '_p'])})"


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}"


def _rating(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    ci = r.get("loo_ci") or [None, None]
    return (f"{_num(r['loo_r'])} [{_num(ci[0])}, {_num(ci[1])}]; {r['best_pc']} {_num(r['best_pc_r'])} "
            f"(n {r['n']}, {r['source']})")


METHOD = """Probes: accuracy on the test split with a 95% interval (stored, or bootstrapped from accuracy and n_test).
Ratings: r of the leave-one-out ridge decoding of valence/arousal from the vectors, with its interval, and the
best-aligned principal component's r. RSA: Spearman rho between the upper triangles of two emotion-by-emotion cosine matrices; its p-value
counts the permutations of one side's emotion labels (rows and columns together) reaching rho, (1 + hits) / (1 + n).
ARI: adjusted Rand index of the k-means clusters (saekit's k-means, the ranking's k and seed) on the shared emotions.
Lexical baseline: TF-IDF of the corpus's train stories (smoothed idf, unit rows), each emotion's mean minus the mean
over emotions; its probe predicts the test story's nearest mean (the vector probe's rule on TF-IDF).
What the models add over the corpus: the pair's partial Spearman with the baseline's ranks partialled out
("A ~ B, baseline partialled out", the same permutations), beside each side's RSA with the baseline."""


def markdown(c: Comparison) -> str:
    """compare.md: both tables, the notes and the method."""
    def table(header, rows):
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                          *("| " + " | ".join(r) + " |" for r in rows)])

    lines = [f"# {c.sides['a'].label} vs {c.sides['b'].label}", "",
             f"Corpus `{c.corpus_id}`, {len(c.emotions)} shared emotions, comparison `{c.comparison_id}`, seed {c.seed}.",
             "", table(*side_rows(c)), "", table(*pair_rows(c)), ""]
    lines += [f"- {n}" for n in c.notes] + ([""] if c.notes else [])
    lines += ["![comparison](compare.png)", "", "## Method", "", METHOD, ""]
    return "\n".join(lines)


def figure(c: Comparison, path: Path) -> Path:
    """Three cosine heatmaps in side A's leaf order (each on its own symmetric scale, the diagonal
    blank: RSA compares ranks, and the baseline's cosines are small), and the metrics as grouped bars."""
    import numpy as np

    from saekit.experiments.render import pyplot, save_figure

    plt = pyplot()
    fig = plt.figure(figsize=(15, 10))
    grid = fig.add_gridspec(2, 6, height_ratios=[1.2, 1])
    order = np.array(c.order)
    names = [c.emotions[i] for i in order]
    for j, key in enumerate(SIDE_KEYS):
        ax = fig.add_subplot(grid[0, 2 * j: 2 * j + 2])
        s = c.sides[key]
        m = s.similarity_EE[np.ix_(order, order)].copy()
        np.fill_diagonal(m, np.nan)
        scale = float(np.nanmax(np.abs(m))) or 1.0
        im = ax.imshow(m, cmap="RdBu_r", vmin=-scale, vmax=scale)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(f"{_tag(key)}: {_short(s.label, 40)}", fontsize=9)
        if len(names) <= HEATMAP_LABELS_MAX:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
            ax.set_yticks(range(len(names)), names, fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    _side_bars(fig.add_subplot(grid[1, :3]), c)
    _pair_bars(fig.add_subplot(grid[1, 3:]), c)
    fig.suptitle(f"cosine between emotion vectors, corpus {c.corpus_id}, {len(c.emotions)} shared emotions "
                 "(order: A's average-linkage leaves)", fontsize=10)
    return save_figure(fig, path)


def _tag(key: str) -> str:
    return {"a": "A", "b": "B"}.get(key, "baseline")


def _short(label: str, n: int = 44) -> str:
    return label if len(label) <= n else "…" + label[-n + 1:]


def _side_bars(ax, c: Comparison) -> None:
    import numpy as np

    rated = [t for t in ("valence", "arousal") if any(t in s.ratings for s in c.sides.values())]
    groups = ["best probe", "lexical probe", "PC1 share", "RSA vs baseline", "ARI vs baseline",
              *(f"|{t} r|" for t in rated)]
    lexical = best_probe(c.sides["baseline"])
    width = 0.27
    for j, key in enumerate(SIDE_KEYS):
        s = c.sides[key]
        best = best_probe(s)
        vals = [best["accuracy"] if best and key != "baseline" else np.nan,
                lexical["accuracy"] if lexical and key == "baseline" else np.nan,
                s.explained_variance[0] if s.explained_variance else np.nan,
                c.pairs[f"{key}~baseline"]["rsa"] if key != "baseline" else np.nan,
                c.pairs[f"{key}~baseline"]["ari"] if key != "baseline" else np.nan,
                *(abs(r["loo_r"]) if (r := s.ratings.get(t)) and r.get("loo_r") is not None else np.nan
                  for t in rated)]
        ax.bar(np.arange(len(groups)) + (j - 1) * width, np.nan_to_num(vals), width,
               label=f"{_tag(key)}: {_short(s.label, 30)}")
    chance = c.sides["a"].probes[0]["chance"] if c.sides["a"].probes else None
    if chance:
        ax.axhline(chance, color="grey", lw=0.8, ls=":", label="probe chance")
    ax.set_xticks(range(len(groups)), groups, rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("each side (probe accuracy, variance share, agreement with the corpus-only baseline)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")


def _pair_bars(ax, c: Comparison) -> None:
    keys = ["a~b", "a~b | baseline", "a~baseline", "b~baseline"]
    rsa = [c.pairs[k]["rsa"] for k in keys]
    colors = ["tab:purple", "tab:red", "tab:blue", "tab:orange"]
    ax.bar(range(len(keys)), rsa, color=colors, label="RSA (Spearman)")
    ari_keys = [k for k in keys if "ari" in c.pairs[k]]
    ax.bar([len(keys) + 0.5 + i for i in range(len(ari_keys))], [c.pairs[k]["ari"] for k in ari_keys],
           color=[colors[keys.index(k)] for k in ari_keys], hatch="//", alpha=0.7, label="ARI (k-means)")
    ticks = list(range(len(keys))) + [len(keys) + 0.5 + i for i in range(len(ari_keys))]
    short = {k: PAIR_NAMES[k].replace(", baseline partialled out", " |\nbaseline") for k in keys}
    ax.set_xticks(ticks, [short[k] for k in keys] + [short[k] for k in ari_keys], fontsize=8)
    for x, k in zip(range(len(keys)), keys):
        ax.text(x, max(c.pairs[k]["rsa"], 0) + 0.02, f"{c.pairs[k]['rsa']:.2f}", ha="center", fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylim(min(0, *rsa, *(c.pairs[k]["ari"] for k in ari_keys)) - 0.05, 1.1)
    ax.set_title("pairs: similarity-matrix agreement (RSA) and cluster agreement (ARI)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")


def default_out(a: str, b: str) -> Path:
    """artifacts/compare/A__vs__B, each side's spec made a safe folder name."""
    from saekit.artifacts import artifacts_dir

    slug = lambda s: re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-")  # noqa: E731
    return artifacts_dir() / "compare" / f"{slug(a)}__vs__{slug(b)}"


def check_out(out: Path) -> None:
    """Refuse, before any compute, an out folder that is a file or cannot be made."""
    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out} is a file; give a folder for compare.json, compare.md and compare.png")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CompareError(f"--out {out}: cannot write under {parent}")


def write_report(c: Comparison, out: Path) -> dict[str, Path]:
    """compare.json, compare.md and compare.png in `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "compare.json", "md": out / "compare.md", "png": out / "compare.png"}
    files["json"].write_text(json.dumps(c.to_json(), indent=1, default=float))
    files["md"].write_text(markdown(c))
    figure(c, files["png"])
    return files
