"""trace: no intervention; each emotion's reading on the clean model along three scenarios.

Readings: the projection of the activation at the hook on each emotion's unit vector (vec:<e>),
and the summed activation of its top selective SAE features (feat:<e>), at the start of each
assistant turn of an impossible-task conversation, after live-dialogue user messages, and at the
end of the dose-response prompts. Controls: random unit directions (vec:random) and matched
random features, read the same way. The report gives rank correlations with the turn and the
dose next to the controls', and live-dialogue group means.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saekit.corpus import load_scenario
from saekit.experiments.batches import chat_ids, read_acts
from saekit.experiments.controls import control_direction
from saekit.experiments.render import fmt, pyplot, save_figure
from saekit.experiments.spec import ExperimentError
from saekit.experiments.stats import spearman
from saekit.experiments.targets import Setting, Target, result_rows
from saekit.experiments.tasks.reading import ReadingPrompts, ReadingTask

SCENARIOS = ("impossible_task", "live_dialogue", "dose_response")
COLUMNS = ["scenario", "emotion", "statistic", "value", "control", "control range", "n", "verdict"]
NOTE = ("Control: projections on random unit directions (vec) or matched random features (feat); "
        "'control range' is the spread of the control's correlation within each conversation/drug.")


@dataclass
class TracePrompts(ReadingPrompts):
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    """Which scenarios to read along."""
    per_group: int = 2
    """Live-dialogue items per user emotion."""
    drugs: list[str] | None = None
    """Dose-response drugs (default all)."""


class TraceTask(ReadingTask):
    """Readings of each emotion (vector projection; SAE feature activation) on the clean model."""
    name = "trace"
    chat = True
    Prompts = TracePrompts
    subject = "a trace"
    assumed = (20, 600)

    @classmethod
    def check(cls, spec):
        super().check(spec)
        bad = [s for s in spec.prompts.scenarios if s not in SCENARIOS]
        if bad:
            raise ValueError(f"prompts.scenarios {bad} unknown; choose from {list(SCENARIOS)}")

    def __init__(self, model, res):
        super().__init__(model, res)
        spec, tok = self.spec, self.tok
        self.points: list[tuple[str, str, str, list[int], list[int], dict[str, float]]] = []
        # (scenario, group, point id prefix, token ids, read positions, extra metrics per position)
        if "impossible_task" in spec.prompts.scenarios:
            convs = load_scenario("impossible_task")["conversations"]
            if spec.prompts.ids is not None:
                convs = [c for c in convs if c["id"] in spec.prompts.ids]
            convs = convs[:spec.prompts.limit] if spec.prompts.limit else convs
            for c in convs:
                msgs = [{"role": "system", "content": c["system"]}] + c["turns"]
                full = chat_ids(tok, msgs, add_generation_prompt=True)
                starts = [i for i, t in enumerate(c["turns"]) if t["role"] == "assistant"] + [len(c["turns"])]
                for n, ti in enumerate(starts):
                    prefix = chat_ids(tok, msgs[:ti + 1])
                    if full[:len(prefix)] != prefix:
                        raise ExperimentError(f"{c['id']}: the conversation does not tokenize prefix-stably at turn {ti}")
                    self.points.append(("impossible_task", c["id"], f"{c['id']}/assistant{n + 1:02d}", full,
                                        [len(prefix) - 1], {"x": float(n + 1)}))
        if "live_dialogue" in spec.prompts.scenarios:
            rows = load_scenario("live_dialogue")
            seen: dict[str, int] = {}
            for r in rows:
                g = r["user_emotion"]
                if seen.get(g, 0) >= spec.prompts.per_group:
                    continue
                seen[g] = seen.get(g, 0) + 1
                ids = chat_ids(tok, [{"role": "user", "content": r["text"]}])
                self.points.append(("live_dialogue", g, r["id"], ids, [len(ids) - 1], {}))
        if "dose_response" in spec.prompts.scenarios:
            data = load_scenario("dose_response")
            drugs = [d for d in data["drugs"] if spec.prompts.drugs is None or d["drug"] in spec.prompts.drugs]
            if spec.prompts.drugs is not None and len(drugs) != len(spec.prompts.drugs):
                raise ExperimentError(f"prompts.drugs {spec.prompts.drugs}: known {[d['drug'] for d in data['drugs']]}")
            for d in drugs:
                for dose in d["doses_mg"]:
                    text = data["template"].format(dose=dose, drug=d["drug"], reason=d["reason"])
                    ids = chat_ids(tok, [{"role": "user", "content": text}])
                    self.points.append(("dose_response", d["drug"], f"{d['drug']}/{dose}mg", ids, [len(ids) - 1],
                                        {"x": float(dose), "dose_ratio": dose / d["safe_limit_mg"]}))
        self.vectors = res.vectors[spec.hook]
        d = next(iter(self.vectors.values())).numel()
        self.units = {e: v / v.norm() for e, v in self.vectors.items()}
        self.control_units = [control_direction(d, spec.seed, k) for k in range(spec.controls)]

    @torch.no_grad()
    def measure(self, setting):
        rows = []
        hook = self.spec.hook
        cache: dict[tuple, torch.Tensor] = {}
        for scenario, group, pid, ids, where, extra in self.points:
            key = tuple(ids)
            if key not in cache:
                cache.clear()
                cache[key] = read_acts(self.model, hook, ids)
            acts = cache[key][where[0]]
            m = {}
            if self.spec.wants("vector"):
                m.update({f"vec:{e}": float(acts @ u) for e, u in self.units.items()})
            feats = None
            if self.res.emotion_features and self.spec.wants("feature"):
                feats = self.res.sae.encode(acts[None].to(self.res.sae.dtype))[0]
                m.update({f"feat:{e}": float(feats[fs].sum()) for e, fs in self.res.emotion_features.items()})
            m.update(extra)
            base = Setting(scenario, "none", Target(group), None, False)
            rows += result_rows(base, pid, m)
            for k, u in enumerate(self.control_units):
                c = {}
                if self.spec.wants("vector"):
                    c["vec:random"] = float(acts @ u)
                if feats is not None and self.res.controls:
                    for e, draws in self.res.controls.items():
                        if e.startswith("trace:") and k < len(draws):
                            c[f"feat:{e[6:]}"] = float(feats[draws[k].features].sum())
                c.update(extra)
                rows += result_rows(Setting(f"{scenario}:control{k}", "none", Target(group), None, True), pid, c)
        return rows

    # ------------------------------------------------------------------ report

    @classmethod
    def summarize(cls, exp, data):
        stats = trace_stats(exp, data)
        return COLUMNS, trace_table(stats), [NOTE], stats

    @classmethod
    def plot(cls, exp, data, stats, out, title):
        plots = []
        for scenario, xlabel, logx in (("impossible_task", "assistant turn", False), ("dose_response", "dose (mg)", True)):
            p = plot_trace(data, scenario, f"{exp['name']}: {scenario}", out / f"trace_{scenario}.png", xlabel, logx)
            if p:
                plots.append(p)
        p = plot_live(data, out / "trace_live_dialogue.png")
        if p:
            plots.append(p)
        return plots

    @classmethod
    def sentence(cls, summary):
        if not summary["rows"]:
            return "No measurements."
        return f"{len(summary['rows'])} emotion readings traced; " + "; ".join(summary["notes"][:1])


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
    return [[r["scenario"], r["emotion"], r["statistic"], fmt(r["value"], 3), fmt(r["control"], 3),
             r["control_range"], str(r["n"]), r["verdict"]] for r in rows]


def plot_trace(data: list[dict], scenario: str, title: str, path: Path, xlabel: str, logx: bool = False) -> Path | None:
    pts = _points(data, scenario, False)
    if not pts:
        return None
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_live(data: list[dict], path: Path) -> Path | None:
    pts = _points(data, "live_dialogue", False)
    if not pts:
        return None
    plt = pyplot()
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
    return save_figure(fig, path)
