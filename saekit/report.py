"""Experiment reports: a summary table and PNG plots from the rows an experiment stored.

Every effect is the mean over prompts of (value under the intervention - value with none), with a
bootstrap interval over prompts, printed next to the same quantity for the matched random
controls and the difference between the two. A row whose interval for that difference includes 0
is reported as "null": a small model may show no effect, and the report says so.
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path
from typing import Any

from saekit.db import Database
from saekit.experiments import PRIMARY, bootstrap_ci, spearman

# A bootstrap over fewer prompts than this says little about the population of prompts.
MIN_PROMPTS_FOR_VERDICT = 5

COLUMNS = ["condition", "strength", "metric", "effect", "95% CI", "control", "control 95% CI", "effect - control",
           "95% CI ", "n", "verdict"]
TRACE_COLUMNS = ["scenario", "emotion", "statistic", "value", "control", "control range", "n", "verdict"]


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}g}" if abs(x) < 1e4 else f"{x:+.3e}"


def _ci(lo: float, hi: float) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]" if not math.isnan(lo) else "-"


def load_experiment(experiment_id: str, db: Database) -> tuple[dict, list[dict]]:
    """The experiment's row (an id, a run id, or a name: its latest run) and all its measurements."""
    rows = db.sql("SELECT experiment_id, name, model_id, sae_id, spec, created_at FROM experiments "
                  "WHERE experiment_id = ? OR run_id = ? OR name = ? ORDER BY created_at DESC LIMIT 1",
                  [experiment_id, experiment_id, experiment_id])
    if not rows:
        known = [r[0] for r in db.sql("SELECT experiment_id FROM experiments ORDER BY created_at DESC LIMIT 5")]
        raise ValueError(f"no experiment {experiment_id!r} in {db.path}; latest: {known}")
    eid, name, model_id, sae_id, spec, created = rows[0]
    exp = {"experiment_id": eid, "name": name, "model_id": model_id, "sae_id": sae_id,
           "spec": json.loads(spec) if isinstance(spec, str) else spec, "created_at": str(created)}
    cols = ["condition", "target", "strength", "is_control", "prompt_id", "metric", "value"]
    data = [dict(zip(cols, r)) for r in db.sql(f"SELECT {', '.join(cols)} FROM intervention_results "
                                              "WHERE experiment_id = ?", [eid])]
    return exp, data


# ---------------------------------------------------------------------------- intervention effects


def primary_metric(task: str, condition: dict | None, words: list[str]) -> str:
    if task == "probes":
        emotion = (condition or {}).get("emotion")
        if not emotion and isinstance((condition or {}).get("features"), str):
            emotion = condition["features"].split()[-1]
        return f"logp:{emotion}" if emotion in words else f"logp:{words[0]}"
    return PRIMARY[task]


def effects(exp: dict, data: list[dict]) -> list[dict[str, Any]]:
    """One row per condition x strength: effect, control effect and their difference, with intervals."""
    spec = exp["spec"]["spec"]
    task, n_boot, seed = spec["task"], spec["n_bootstrap"], spec["seed"]
    words = sorted({r["metric"].split(":", 1)[1] for r in data if r["metric"].startswith("logp:")})
    conds = {c["name"]: c for c in spec["conditions"]}
    base = {(r["prompt_id"], r["metric"]): r["value"] for r in data if r["condition"] == "none"}
    groups: dict[tuple, dict[bool, dict[str, list[float]]]] = collections.defaultdict(
        lambda: {False: collections.defaultdict(list), True: collections.defaultdict(list)})
    for r in data:
        if r["condition"] == "none":
            continue
        metric = primary_metric(task, conds.get(r["condition"]), words)
        if r["metric"] != metric or (r["prompt_id"], metric) not in base:
            continue
        diff = r["value"] - (0.0 if task == "side_effects" else base[(r["prompt_id"], metric)])
        groups[(r["condition"], r["strength"], metric)][bool(r["is_control"])][r["prompt_id"]].append(diff)
    out = []
    for (cond, strength, metric), sides in groups.items():
        eff = {p: sum(v) / len(v) for p, v in sides[False].items()}
        ctl = {p: sum(v) / len(v) for p, v in sides[True].items()}
        m, lo, hi = bootstrap_ci(list(eff.values()), n_boot, seed=seed)
        cm, clo, chi = bootstrap_ci(list(ctl.values()), n_boot, seed=seed) if ctl else (math.nan,) * 3
        paired = [eff[p] - ctl[p] for p in eff if p in ctl]
        dm, dlo, dhi = bootstrap_ci(paired, n_boot, seed=seed) if paired else (math.nan,) * 3
        ref_lo, ref_hi = (dlo, dhi) if paired else (lo, hi)
        if math.isnan(ref_lo) or len(eff) < MIN_PROMPTS_FOR_VERDICT:
            verdict = f"too few prompts (n < {MIN_PROMPTS_FOR_VERDICT})"
        elif ref_lo > 0:
            verdict = "above control" if paired else "positive"
        elif ref_hi < 0:
            verdict = "below control" if paired else "negative"
        else:
            verdict = "null (within control)" if paired else "null"
        out.append({"condition": cond, "strength": strength, "metric": metric, "effect": m, "lo": lo, "hi": hi,
                    "control": cm, "control_lo": clo, "control_hi": chi, "diff": dm, "diff_lo": dlo,
                    "diff_hi": dhi, "n": len(eff), "verdict": verdict})
    order = {c: i for i, c in enumerate(conds)}
    return sorted(out, key=lambda r: (order.get(r["condition"], 99), r["strength"] if r["strength"] is not None else 0))


def effect_table(rows: list[dict]) -> list[list[str]]:
    return [[r["condition"], "-" if r["strength"] is None else f"{r['strength']:g}", r["metric"], _fmt(r["effect"]),
             _ci(r["lo"], r["hi"]), _fmt(r["control"]), _ci(r["control_lo"], r["control_hi"]), _fmt(r["diff"]),
             _ci(r["diff_lo"], r["diff_hi"]), str(r["n"]), r["verdict"]] for r in rows]


# ---------------------------------------------------------------------------- trace statistics


def _points(data: list[dict], scenario: str, control: bool) -> dict[str, dict[str, float]]:
    """prompt_id -> metric -> value (controls averaged over draws)."""
    acc: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    groups = {}
    for r in data:
        c = r["condition"]
        if (c == scenario and not control) or (control and r["is_control"] and c.startswith(scenario + ":")):
            acc[r["prompt_id"]][r["metric"]].append(r["value"])
            groups[r["prompt_id"]] = r["target"]
    out = {p: {m: sum(v) / len(v) for m, v in ms.items()} for p, ms in acc.items()}
    for p in out:
        out[p]["_group"] = groups[p]
    return out


def trace_stats(exp: dict, data: list[dict]) -> list[dict[str, Any]]:
    """Rank correlations of each reading with the turn (impossible task) and the dose, next to the
    same statistic for random directions / matched random features; live-dialogue group means."""
    out = []
    for scenario, xname, stat in (("impossible_task", "x", "Spearman r with assistant turn"),
                                  ("dose_response", "x", "Spearman r with dose")):
        pts, ctl = _points(data, scenario, False), _points(data, scenario, True)
        if not pts:
            continue
        metrics = sorted({m for p in pts.values() for m in p if m.startswith(("vec:", "feat:"))})
        for m in metrics:
            xs = [p[xname] for p in pts.values() if m in p]
            ys = [p[m] for p in pts.values() if m in p]
            r = spearman(xs, ys)
            cm = "vec:random" if m.startswith("vec:") else m
            cpts = [p for p in ctl.values() if cm in p]
            cr = spearman([p[xname] for p in cpts], [p[cm] for p in cpts]) if cpts else math.nan
            # a per-group null: correlations of the control readings within each group
            per_group = collections.defaultdict(list)
            for p in cpts:
                per_group[p["_group"]].append((p[xname], p[cm]))
            crs = [spearman([a for a, _ in v], [b for _, b in v]) for v in per_group.values() if len(v) >= 3]
            crs = [c for c in crs if not math.isnan(c)]
            rng = f"[{min(crs):+.2f}, {max(crs):+.2f}]" if crs else "-"
            verdict = "-" if math.isnan(r) else ("rises" if r > 0.5 else "falls" if r < -0.5 else "flat")
            if not math.isnan(cr) and abs(r) <= abs(cr):
                verdict += " (no stronger than control)"
            out.append({"scenario": scenario, "emotion": m, "statistic": stat, "value": r, "control": cr,
                        "control_range": rng, "n": len(xs), "verdict": verdict})
    pts = _points(data, "live_dialogue", False)
    if pts:
        metrics = sorted({m for p in pts.values() for m in p if m.startswith(("vec:", "feat:"))})
        groups = sorted({p["_group"] for p in pts.values()})
        for m in metrics:
            for g in groups:
                vals = [p[m] for p in pts.values() if p["_group"] == g and m in p]
                others = [p[m] for p in pts.values() if p["_group"] != g and m in p]
                mean = sum(vals) / len(vals)
                rest = sum(others) / len(others) if others else math.nan
                out.append({"scenario": "live_dialogue", "emotion": m, "statistic": f"mean after a {g} user",
                            "value": mean, "control": rest, "control_range": "other users' mean",
                            "n": len(vals), "verdict": "higher" if mean > rest else "lower"})
    return out


def trace_table(rows: list[dict]) -> list[list[str]]:
    return [[r["scenario"], r["emotion"], r["statistic"], _fmt(r["value"], 3), _fmt(r["control"], 3),
             r["control_range"], str(r["n"]), r["verdict"]] for r in rows]


# ---------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_effects(rows: list[dict], title: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by = collections.defaultdict(list)
    for r in rows:
        by[r["condition"]].append(r)
    for i, (cond, rs) in enumerate(by.items()):
        rs = sorted(rs, key=lambda r: r["strength"] or 0.0)
        xs = [r["strength"] or 0.0 for r in rs]
        color = f"C{i}"
        ax.errorbar(xs, [r["effect"] for r in rs], yerr=[[r["effect"] - r["lo"] for r in rs], [r["hi"] - r["effect"] for r in rs]],
                    marker="o", capsize=3, color=color, label=cond)
        if not all(math.isnan(r["control"]) for r in rs):
            ax.errorbar(xs, [r["control"] for r in rs],
                        yerr=[[max(r["control"] - r["control_lo"], 0) for r in rs], [max(r["control_hi"] - r["control"], 0) for r in rs]],
                        marker="x", linestyle="--", capsize=3, color=color, alpha=0.6, label=f"{cond} (control)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("strength")
    metrics = sorted({r["metric"] for r in rows})
    what = metrics[0] if len(metrics) == 1 else ("log P(each condition's own emotion word)"
                                                 if all(m.startswith("logp:") for m in metrics) else "each condition's metric")
    ax.set_ylabel(f"effect on {what} (vs no intervention)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trace(data: list[dict], scenario: str, title: str, path: Path, xlabel: str, logx: bool = False) -> Path | None:
    pts = _points(data, scenario, False)
    if not pts:
        return None
    plt = _plt()
    metrics = sorted({m for p in pts.values() for m in p if m.startswith("vec:")}) or \
        sorted({m for p in pts.values() for m in p if m.startswith("feat:")})
    has_feat = any(m.startswith("feat:") for p in pts.values() for m in p)
    ncols = 2 if has_feat and metrics[0].startswith("vec:") else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.5), squeeze=False)
    ctl = _points(data, scenario, True)
    for ax, prefix in zip(axes[0], ["vec:", "feat:"][:ncols]):
        ms = sorted({m for p in pts.values() for m in p if m.startswith(prefix)})
        groups = sorted({p["_group"] for p in pts.values()})
        for i, m in enumerate(ms):
            # mean over groups at each x, with the per-group spread as a band
            per_x = collections.defaultdict(list)
            for p in pts.values():
                if m in p:
                    per_x[p["x"]].append(p[m])
            xs = sorted(per_x)
            ax.plot(xs, [sum(per_x[x]) / len(per_x[x]) for x in xs], marker="o", color=f"C{i % 10}", label=m.split(":", 1)[1])
            if len(groups) > 1:
                ax.fill_between(xs, [min(per_x[x]) for x in xs], [max(per_x[x]) for x in xs], color=f"C{i % 10}", alpha=0.12)
        cm = "vec:random" if prefix == "vec:" else None
        if cm:
            per_x = collections.defaultdict(list)
            for p in ctl.values():
                if cm in p:
                    per_x[p["x"]].append(p[cm])
            if per_x:
                xs = sorted(per_x)
                ax.plot(xs, [sum(per_x[x]) / len(per_x[x]) for x in xs], color="black", ls="--", label="random direction")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("projection on unit vector" if prefix == "vec:" else "top-feature activation")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_live(data: list[dict], path: Path) -> Path | None:
    pts = _points(data, "live_dialogue", False)
    if not pts:
        return None
    plt = _plt()
    ms = sorted({m for p in pts.values() for m in p if m.startswith("vec:")})
    groups = sorted({p["_group"] for p in pts.values()})
    fig, ax = plt.subplots(figsize=(max(7, len(ms) * 0.6), 4.5))
    width = 0.8 / max(len(groups), 1)
    for gi, g in enumerate(groups):
        vals = []
        for m in ms:
            v = [p[m] for p in pts.values() if p["_group"] == g and m in p]
            vals.append(sum(v) / len(v))
        ax.bar([i + gi * width for i in range(len(ms))], vals, width, label=f"user: {g}")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ms))], [m[4:] for m in ms], rotation=60, fontsize=7)
    ax.set_ylabel("reading at the assistant turn start")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- entry point


def report(experiment_id: str, db_path: str | Path | None = None, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Summary table(s) and PNG plots of one experiment.

    Returns {"experiment_id", "name", "task", "title", "columns", "rows", "notes", "plots",
    "generations"}; rows are lists of strings ready to print under columns.
    """
    with Database(db_path, read_only=True) as db:
        exp, data = load_experiment(experiment_id, db)
    spec = exp["spec"]["spec"]
    task = spec["task"]
    out = Path(out_dir) if out_dir else Path(spec.get("out", "artifacts/experiments")) / exp["experiment_id"]
    out.mkdir(parents=True, exist_ok=True)
    title = f"{exp['name']} ({task}) on {exp['model_id']}"
    plots: list[str] = []
    notes: list[str] = []
    if task == "trace":
        stats = trace_stats(exp, data)
        columns, rows = TRACE_COLUMNS, trace_table(stats)
        for scenario, xlabel, logx in (("impossible_task", "assistant turn", False), ("dose_response", "dose (mg)", True)):
            p = plot_trace(data, scenario, f"{exp['name']}: {scenario}", out / f"trace_{scenario}.png", xlabel, logx)
            if p:
                plots.append(str(p))
        p = plot_live(data, out / "trace_live_dialogue.png")
        if p:
            plots.append(str(p))
        notes.append("Control: projections on random unit directions (vec) or matched random features (feat); "
                     "'control range' is the spread of the control's correlation within each conversation/drug.")
    else:
        eff = effects(exp, data)
        columns, rows = COLUMNS, effect_table(eff)
        plots.append(str(plot_effects(eff, title, out / "effect_vs_strength.png")))
        nulls = [r for r in eff if r["verdict"].startswith("null")]
        if nulls:
            notes.append(f"{len(nulls)} of {len(eff)} condition x strength rows show no effect beyond their random "
                         "controls (95% bootstrap interval over prompts includes 0).")
        if task == "probes":
            notes.append("Effect: change in log P(first token of ' ' + the condition's emotion word) at the end of "
                         "'How does he feel? He feels' prompts, versus no intervention.")
        elif task == "impossible_task":
            notes.append("Effect: change in the mean per-token log-probability margin of the cheating over the honest "
                         "reply, versus no intervention (positive = more inclined to cheat).")
        else:
            notes.append("Effect: mean per-token KL(clean || intervened) on neutral text.")
    gens = []
    gfile = exp["spec"].get("generations_file")
    if gfile and Path(gfile).exists():
        gens = [json.loads(line) for line in Path(gfile).read_text().splitlines() if line.strip()]
    summary = {"experiment_id": exp["experiment_id"], "name": exp["name"], "task": task, "title": title,
               "columns": columns, "rows": rows, "notes": notes, "plots": plots, "generations": gens}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def format_report(summary: dict[str, Any]) -> str:
    """Plain-text rendering of `report`'s result (the CLI may print a rich table instead)."""
    cols, rows = summary["columns"], summary["rows"]
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = [summary["title"], "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines += [f"note: {n}" for n in summary["notes"]]
    for g in summary["generations"][:12]:
        lines.append(f"[{g['condition']} {g['strength']}] {g['prompt']!r} -> {g['reply']!r}")
    lines += [f"plot: {p}" for p in summary["plots"]]
    return "\n".join(lines)
