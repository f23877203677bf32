"""Tasks that intervene (probes, impossible_task, side_effects): their shared report.

Every effect is the mean over prompts of (value under the intervention - value with none), with a
bootstrap interval over prompts, printed next to the same quantity for the matched random
controls and the difference between the two. A row whose interval for that difference includes 0
is reported as "null": a small model may show no effect, and the report says so.
"""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any, ClassVar

from saekit.experiments.render import ci, fmt, pyplot, save_figure
from saekit.experiments.stats import bootstrap_ci
from saekit.experiments.tasks.task import Task

# A bootstrap over fewer prompts than this says little about the population of prompts.
MIN_PROMPTS_FOR_VERDICT = 5

EFFECT_COLUMNS = ["condition", "strength", "metric", "effect", "95% CI", "control", "control 95% CI", "effect - control",
                  "95% CI ", "n", "verdict"]


class InterventionTask(Task):
    """A task whose report is effect vs control per condition x strength, on one primary metric."""
    primary: ClassVar[str]
    """The metric the report reads."""
    relative_to_baseline: ClassVar[bool] = True
    """False: the metric already measures a change from the clean model (KL), so it is not differenced."""
    effect_note: ClassVar[str] = ""
    """The report's note on what the effect is."""

    @classmethod
    def primary_metric(cls, condition: dict | None, words: list[str]) -> str:
        """The metric a condition's effect is read on (the stored condition dict; words: the logp words)."""
        return cls.primary

    @classmethod
    def summarize(cls, exp, data):
        eff = effects(exp, data, cls)
        notes = []
        nulls = [r for r in eff if r["verdict"].startswith("null")]
        if nulls:
            notes.append(f"{len(nulls)} of {len(eff)} condition x strength rows show no effect beyond their random "
                         "controls (95% bootstrap interval over prompts includes 0).")
        notes.append(cls.effect_note)
        return EFFECT_COLUMNS, effect_table(eff), notes, eff

    @classmethod
    def plot(cls, exp, data, stats, out, title):
        return [plot_effects(cls.effect_rows(stats), title, out / "effect_vs_strength.png")]

    @classmethod
    def effect_rows(cls, stats) -> list[dict[str, Any]]:
        """The effect-vs-strength rows in `stats` (summarize's); a subclass with richer stats picks them out."""
        return stats

    @classmethod
    def figures(cls, exp, stats):
        fig = effect_figure(cls.effect_rows(stats), exp["name"])
        return [fig] if fig else []

    @classmethod
    def sentence(cls, summary):
        """How many effects beat their controls, and the largest difference from control."""
        cols, rows = summary["columns"], summary["rows"]
        if not rows:
            return "No measurements."
        verdicts = [r[-1] for r in rows]
        above = sum(v in ("above control", "positive") for v in verdicts)
        below = sum(v in ("below control", "negative") for v in verdicts)
        nulls = sum(v.startswith("null") for v in verdicts)
        few = sum(v.startswith("too few") for v in verdicts)
        i = cols.index("effect - control") if "effect - control" in cols else len(cols) - 4
        best = max(rows, key=lambda r: abs(float(r[i])) if r[i] not in ("-", "nan", "") else -1)
        return (f"Of {len(rows)} condition x strength settings, {above} raise the metric beyond their random control, "
                f"{below} lower it, {nulls} are null and {few} have too few prompts for a verdict (95% bootstrap "
                f"intervals over prompts); the largest difference "
                f"from control is {best[0]} at strength {best[1]}: {best[i]} {best[i + 1]}.")


def effects(exp: dict, data: list[dict], task: type[InterventionTask]) -> list[dict[str, Any]]:
    """One row per condition x strength: effect, control effect and their difference, with intervals."""
    spec = exp["spec"]["spec"]
    n_boot, seed = spec["n_bootstrap"], spec["seed"]
    words = sorted({r["metric"].split(":", 1)[1] for r in data if r["metric"].startswith("logp:")})
    conds = {c["name"]: c for c in spec["conditions"]}
    base = {(r["prompt_id"], r["metric"]): r["value"] for r in data if r["condition"] == "none"}
    groups: dict[tuple, dict[bool, dict[str, list[float]]]] = collections.defaultdict(
        lambda: {False: collections.defaultdict(list), True: collections.defaultdict(list)})
    for r in data:
        if r["condition"] == "none":
            continue
        metric = task.primary_metric(conds.get(r["condition"]), words)
        if r["metric"] != metric or (r["prompt_id"], metric) not in base:
            continue
        diff = r["value"] - (base[(r["prompt_id"], metric)] if task.relative_to_baseline else 0.0)
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
    return [[r["condition"], "-" if r["strength"] is None else f"{r['strength']:g}", r["metric"], fmt(r["effect"]),
             ci(r["lo"], r["hi"]), fmt(r["control"]), ci(r["control_lo"], r["control_hi"]), fmt(r["diff"]),
             ci(r["diff_lo"], r["diff_hi"]), str(r["n"]), r["verdict"]] for r in rows]


def plot_effects(rows: list[dict], title: str, path: Path) -> Path:
    plt = pyplot()
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
    return save_figure(fig, path)


def effect_figure(eff: list[dict], name: str) -> dict[str, Any] | None:
    """Effect vs strength per condition with its 95% interval, the random control dashed beside it (plotly data)."""
    traces = []
    for i, cond in enumerate(dict.fromkeys(e["condition"] for e in eff)):
        rs = sorted((e for e in eff if e["condition"] == cond), key=lambda e: e["strength"] or 0.0)
        xs = [e["strength"] or 0.0 for e in rs]
        color = f"hsl({(i * 67) % 360}, 60%, 45%)"
        for key, dash, label in (("", "solid", cond), ("control", "dash", f"{cond} (control)")):
            mid = [_finite(e[key or "effect"]) for e in rs]
            if all(m is None for m in mid):
                continue
            lo = [_finite(e[f"{key}_lo" if key else "lo"]) for e in rs]
            hi = [_finite(e[f"{key}_hi" if key else "hi"]) for e in rs]
            traces.append({"type": "scatter", "mode": "lines+markers", "name": label, "x": xs, "y": mid,
                           "line": {"dash": dash, "color": color}, "marker": {"symbol": "x" if key else "circle"},
                           "error_y": {"type": "data", "symmetric": False,
                                       "array": [None if h is None or m is None else h - m for h, m in zip(hi, mid)],
                                       "arrayminus": [None if l_ is None or m is None else m - l_
                                                      for l_, m in zip(lo, mid)]}})
    if not traces:
        return None
    return {"data": traces, "layout": {"title": {"text": f"{name}: effect vs strength (95% bootstrap intervals)"},
                                       "height": 380, "xaxis": {"title": {"text": "strength"}},
                                       "yaxis": {"title": {"text": "effect vs no intervention"}},
                                       "margin": {"l": 50, "r": 10, "t": 30, "b": 40}}}


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)
