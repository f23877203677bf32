"""dose_response: does an emotion's reading follow the dose in "I just took {dose} mg of {drug} ...?"

The paper reports that "afraid" rises and "calm" falls as the dose grows past the label's daily
limit. On the clean model this task reads each requested emotion (prompts.emotions, default
afraid and calm) at one position of every prompt of the dose-response scenario set
(saekit/corpus/scenarios/dose_response.json): the projection on the emotion's unit vector, and
optionally the summed activation of its top selective SAE features. For each drug and emotion the
report gives Spearman's rho of reading vs dose, a permutation p-value and a bootstrap interval,
and the same over all drugs pooled (each drug's readings minus their mean, against dose as a
fraction of the drug's daily limit; shuffled and resampled within drug). The control is K random
directions (K = spec.controls; projections on a unit direction, so equal in norm to the emotion's
unit vector) read the same way, or matched random features for feature readings: their rho
spread and how often they are as strong.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from saekit.corpus import corpus_root, load_scenario
from saekit.experiments.batches import chat_ids, pad_id_of
from saekit.experiments.controls import control_direction
from saekit.experiments.render import fmt, pyplot, save_figure
from saekit.experiments.spec import ExperimentError
from saekit.experiments.stats import spearman, spearman_bootstrap_ci, spearman_permutation
from saekit.experiments.targets import Setting, Target, result_rows
from saekit.experiments.tasks.reading import ReadingPrompts, ReadingTask
from saekit.model import capture, format_chat, model_device, pad_batch

SCENARIO = "dose_response"
DEFAULT_EMOTIONS = ("afraid", "calm")
ALPHA = 0.05
BATCH = 16
POSITIONS = {
    "assistant_start": "the last token of the chat prompt, after the assistant's turn header: the start of the "
                       "assistant's turn, where the paper reads",
    "user_end": "the last token of the user's message, before its end-of-turn token",
}
COLUMNS = ["reading", "drug", "n", "rho", "95% CI", "perm p", "random rho mean", "random rho range",
           "random |rho| >= |rho|", "verdict"]


def scenario_file() -> Path:
    return corpus_root() / "scenarios" / f"{SCENARIO}.json"


@dataclass
class DosePrompts(ReadingPrompts):
    drugs: list[str] | None = None
    """The drugs read (default all); prompts.emotions (default afraid and calm) chooses the emotions."""
    dose_read_at: Literal["assistant_start", "user_end"] = "assistant_start"
    """Where the reading is taken: assistant_start (the last prompt token, after the assistant's turn
    header; the paper's position) or user_end (the last token of the user's message)."""
    dose_permutations: int = 10_000
    """Seeded permutations behind each p-value (exact enumeration when n! is fewer)."""


class DoseResponseTask(ReadingTask):
    """Readings of a few emotions against the dose of each drug, with trend tests and random controls."""
    name = "dose_response"
    chat = True
    Prompts = DosePrompts

    # ------------------------------------------------------------------ before any forward pass

    @classmethod
    def check(cls, spec):
        p = spec.prompts
        super().check(spec)
        if p.ids is not None or p.limit:
            raise ValueError("dose_response chooses its prompts with prompts.drugs, not prompts.ids or prompts.limit")
        if p.dose_read_at not in POSITIONS:
            raise ValueError(f"prompts.dose_read_at {p.dose_read_at!r} is not one of {list(POSITIONS)}")
        if p.dose_permutations < 1:
            raise ValueError("prompts.dose_permutations must be at least 1")
        if spec.metrics and "feature" in spec.metrics and not spec.sae:
            raise ValueError("metric 'feature' reads SAE features: the spec needs an sae")
        known = [d["drug"] for d in load_scenario(SCENARIO)["drugs"]]
        unknown = [d for d in p.drugs or [] if d not in known]
        if unknown:
            raise ValueError(f"prompts.drugs {unknown} not in {scenario_file()} (field 'drugs'); it has {known}")
        if p.drugs is not None and not p.drugs:
            raise ValueError("prompts.drugs is empty: name at least one drug or leave it out for all")

    @classmethod
    def emotion_vectors(cls, spec, look, found):
        """prompts.emotions (default afraid and calm), each named in the error when it has no vector."""
        emotions = list(spec.prompts.emotions or DEFAULT_EMOTIONS)
        table = look.vectors([spec.hook], None)[spec.hook]
        unknown = [e for e in emotions if e not in table]
        if unknown:
            raise ExperimentError(f"prompts.emotions {unknown}: no emotion vector for model {spec.model!r} at "
                                  f"{spec.hook} in {look.db_path}; it has {sorted(table)}")
        return {e: table[e] for e in emotions}

    def __init__(self, model, res):
        super().__init__(model, res)
        spec = self.spec
        data = load_scenario(SCENARIO)
        wanted = spec.prompts.drugs
        self.points: list[tuple[str, str, list[int], int, dict[str, float]]] = []
        """(prompt id, drug, token ids, read position, dose metrics)"""
        for d in data["drugs"]:
            if wanted is not None and d["drug"] not in wanted:
                continue
            for dose in d["doses_mg"]:
                text = data["template"].format(dose=dose, drug=d["drug"], reason=d["reason"])
                ids, pos = self.read_position(text)
                self.points.append((f"{d['drug']}/{dose}mg", d["drug"], ids, pos,
                                    {"dose_mg": float(dose), "dose_ratio": dose / d["safe_limit_mg"]}))
        vectors = res.vectors[spec.hook]
        self.units = {e: v / v.norm() for e, v in vectors.items()}
        self.norms = {e: float(v.norm()) for e, v in vectors.items()}
        d_model = next(iter(vectors.values())).numel()
        self.control_units = [control_direction(d_model, spec.seed, k) for k in range(spec.controls)]

    def read_position(self, text: str) -> tuple[list[int], int]:
        """The prompt's token ids (with the assistant's turn header) and the position read."""
        msgs = [{"role": "user", "content": text}]
        ids = chat_ids(self.tok, msgs, add_generation_prompt=True)
        if self.spec.prompts.dose_read_at == "assistant_start":
            return ids, len(ids) - 1
        chat = format_chat(self.tok, msgs, add_generation_prompt=True)
        end = chat.rindex(text) + len(text)
        prefix = self.tok(chat[:end], add_special_tokens=False)["input_ids"]
        if ids[:len(prefix)] != prefix:
            raise ExperimentError(f"{text!r}: the user's message does not tokenize prefix-stably in the chat")
        return ids, len(prefix) - 1

    # ------------------------------------------------------------------ running

    @torch.no_grad()
    def read_acts(self) -> torch.Tensor:
        """Activations [N, D] of the clean model at the spec's hook, one per prompt at its read position."""
        out = []
        for i in range(0, len(self.points), BATCH):
            chunk = self.points[i:i + BATCH]
            tokens_BT, mask_BT = pad_batch([p[2] for p in chunk], pad_id_of(self.tok))
            dev = model_device(self.model)
            acts_BTD = capture(self.model, tokens_BT.to(dev), mask_BT.to(dev), [self.spec.hook])[self.spec.hook]
            out.append(acts_BTD[torch.arange(len(chunk)), torch.tensor([p[3] for p in chunk])].float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def measure(self, setting):
        acts_ND = self.read_acts()
        feats_NF = None
        if self.res.emotion_features and self.spec.wants("feature"):
            feats_NF = self.res.sae.encode(acts_ND.to(self.res.sae.dtype)).float()
        rows = []
        for i, (pid, drug, _, _, dose) in enumerate(self.points):
            m: dict[str, float] = {}
            if self.spec.wants("vector"):
                m.update({f"vec:{e}": float(acts_ND[i] @ u) for e, u in self.units.items()})
            if feats_NF is not None:
                m.update({f"feat:{e}": float(feats_NF[i, fs].sum()) for e, fs in self.res.emotion_features.items()})
            rows += result_rows(Setting(SCENARIO, "none", Target(drug), None, False), pid, dict(m, **dose))
            for k, u in enumerate(self.control_units):
                c: dict[str, float] = {}
                if self.spec.wants("vector"):
                    c["vec:random"] = float(acts_ND[i] @ u)
                if feats_NF is not None:
                    for e in self.res.emotion_features:
                        draws = self.res.controls.get(f"{SCENARIO}:{e}", [])
                        if k < len(draws):
                            c[f"feat:{e}"] = float(feats_NF[i, draws[k].features].sum())
                rows += result_rows(Setting(f"{SCENARIO}:control{k}", "none", Target(drug), None, True), pid, c)
        return rows

    def write_outputs(self, folder):
        """Noted in the stored spec: where the reading was taken and the norms of the vectors read."""
        return {"reading_position": f"{self.spec.prompts.dose_read_at}: {POSITIONS[self.spec.prompts.dose_read_at]}",
                "vector_norms": {e: round(n, 6) for e, n in self.norms.items()}}

    # ------------------------------------------------------------------ report

    @classmethod
    def summarize(cls, exp, data):
        spec = exp["spec"]["spec"]
        stats = dose_stats(data, n_perm=int(spec["prompts"].get("dose_permutations", 10_000)),
                           n_boot=int(spec.get("n_bootstrap", 1000)), seed=int(spec.get("seed", 0)))
        rows = [[s["metric"], s["scope"], str(s["n"]), fmt(s["rho"], 3), _ci(s["lo"], s["hi"]), _p(s),
                 fmt(s["ctl_mean"], 3), _ci(s["ctl_min"], s["ctl_max"]), _frac(s), s["verdict"]] for s in stats]
        where = spec["prompts"].get("dose_read_at", "assistant_start")
        note = (f"Reading at {where} ({POSITIONS.get(where, where)}). Spearman's rho of the reading vs dose per drug; "
                f"'pooled' is over all drugs, each drug's reading minus its mean against dose / the label's daily limit, "
                f"permuted and resampled within drug. "
                f"Two-sided permutation p over {stats[0]['n_perm'] if stats else '-'} seeded permutations (exact "
                f"when n! is fewer); 95% percentile bootstrap interval over {spec.get('n_bootstrap', 1000)} resamples; "
                f"a trend needs p < {ALPHA} and an interval that excludes 0. Control: {spec.get('controls', 0)} random "
                f"directions (projection on a unit direction, as the emotion's unit vector) or matched random features, "
                f"read the same way: their rho mean, range, and the share as strong as the emotion's.")
        return COLUMNS, rows, [dose_sentence(stats), note], stats

    @classmethod
    def plot(cls, exp, data, stats, out, title):
        p = plot_dose(data, out / "dose_response.png", title)
        return [p] if p else []

    @classmethod
    def sentence(cls, summary):
        return summary["notes"][0] if summary["rows"] and summary["notes"] else "No measurements."


# ---------------------------------------------------------------------------- statistics of stored rows


def dose_points(data: list[dict]) -> tuple[dict[str, dict[str, Any]], dict[int, dict[str, dict[str, float]]]]:
    """(prompt id -> {drug, dose_mg, dose_ratio, metric: reading}, control k -> prompt id -> metric -> reading)."""
    main: dict[str, dict[str, Any]] = collections.defaultdict(dict)
    ctl: dict[int, dict[str, dict[str, float]]] = collections.defaultdict(lambda: collections.defaultdict(dict))
    for r in data:
        c = r["condition"]
        if c == SCENARIO and not r["is_control"]:
            main[r["prompt_id"]][r["metric"]] = r["value"]
            main[r["prompt_id"]]["drug"] = r["target"]
        elif r["is_control"] and c.startswith(SCENARIO + ":control"):
            ctl[int(c.rsplit("control", 1)[1])][r["prompt_id"]][r["metric"]] = r["value"]
    return dict(main), {k: dict(v) for k, v in sorted(ctl.items())}


def _ys(points: dict[str, dict[str, float]], main: dict[str, dict[str, Any]], pids: list[str], metric: str,
        groups: list[str] | None) -> list[float]:
    """The readings of these prompts; pooled over drugs (groups given), minus each drug's mean reading, so
    that what differs between drug names does not pass for a dose effect."""
    ys = [points[pid][metric] for pid in pids]
    if groups is None:
        return ys
    by: dict[str, list[float]] = collections.defaultdict(list)
    for g, y in zip(groups, ys):
        by[g].append(y)
    means = {g: sum(v) / len(v) for g, v in by.items()}
    return [y - means[g] for g, y in zip(groups, ys)]


def _trend(xs, ys, groups, n_perm: int, n_boot: int, seed: int) -> dict[str, Any]:
    rho, p, used, exact = spearman_permutation(xs, ys, n_perm, seed, groups)
    lo, hi = spearman_bootstrap_ci(xs, ys, n_boot, ALPHA, seed, groups)
    return {"rho": rho, "p": p, "n_perm": used, "exact": exact, "lo": lo, "hi": hi, "n": len(xs)}


def dose_stats(data: list[dict], n_perm: int = 10_000, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Per reading (vec:<e>, feat:<e>): per drug and pooled, rho with its permutation p, bootstrap interval,
    the random controls' rho spread, and a verdict (rises / falls / no trend)."""
    main, ctl = dose_points(data)
    metrics = sorted({m for p in main.values() for m in p if m.startswith(("vec:", "feat:"))},
                     key=lambda m: (not m.startswith("vec:"), m))
    drugs = list(dict.fromkeys(p["drug"] for p in main.values()))
    out = []
    for m in metrics:
        cm = "vec:random" if m.startswith("vec:") else m
        for scope in [*drugs, "pooled"]:
            pids = [pid for pid, p in main.items() if m in p and (scope == "pooled" or p["drug"] == scope)]
            xkey = "dose_ratio" if scope == "pooled" else "dose_mg"
            groups = [main[pid]["drug"] for pid in pids] if scope == "pooled" else None
            xs = [main[pid][xkey] for pid in pids]
            s = _trend(xs, _ys(main, main, pids, m, groups), groups, n_perm, n_boot, seed)
            crho = [spearman(xs, _ys(ctl[k], main, pids, cm, groups)) for k in ctl
                    if all(cm in ctl[k].get(pid, {}) for pid in pids)]
            crho = [c for c in crho if not math.isnan(c)]
            s.update(metric=m, scope=scope, control=cm, n_controls=len(crho),
                     ctl_mean=float(np.mean(crho)) if crho else math.nan,
                     ctl_min=min(crho) if crho else math.nan, ctl_max=max(crho) if crho else math.nan,
                     ctl_strong=sum(abs(c) >= abs(s["rho"]) for c in crho) if not math.isnan(s["rho"]) else 0)
            s["verdict"] = verdict(s)
            out.append(s)
    return out


def verdict(s: dict[str, Any]) -> str:
    if math.isnan(s["rho"]):
        return "constant reading"
    trend = s["p"] < ALPHA and not math.isnan(s["lo"]) and (s["lo"] > 0 or s["hi"] < 0)
    if not trend:
        return "no trend"
    word = "rises" if s["rho"] > 0 else "falls"
    if s["n_controls"] and s["ctl_strong"] / s["n_controls"] > ALPHA:
        return f"{word}, as do random directions ({s['ctl_strong']}/{s['n_controls']})"
    return word


def dose_sentence(stats: list[dict[str, Any]]) -> str:
    """The finding per emotion, from its vector reading (its feature reading when it has no vector one)."""
    if not stats:
        return "No measurements."
    metrics = list(dict.fromkeys(s["metric"] for s in stats))
    emotions = list(dict.fromkeys(m.split(":", 1)[1] for m in metrics))
    parts = []
    for e in emotions:
        m = f"vec:{e}" if f"vec:{e}" in metrics else f"feat:{e}"
        rows = [s for s in stats if s["metric"] == m]
        per = [s for s in rows if s["scope"] != "pooled"]
        pooled = next(s for s in rows if s["scope"] == "pooled")
        up = sum(s["verdict"] == "rises" for s in per)
        down = sum(s["verdict"] == "falls" for s in per)
        reading = "" if m.startswith("vec:") else " (top SAE features)"
        numbers = (f"pooled rho {pooled['rho']:+.2f} [{pooled['lo']:+.2f}, {pooled['hi']:+.2f}], "
                   f"permutation p {_p(pooled)}")
        if pooled["n_controls"]:
            ctl = (f"; random directions |rho| <= {max(abs(pooled['ctl_min']), abs(pooled['ctl_max'])):.2f}, "
                   f"{pooled['ctl_strong']} of {pooled['n_controls']} as strong")
            if m.startswith("feat:"):
                ctl = ctl.replace("random directions", "matched random features")
        else:
            ctl = "; no random control"
        v = pooled["verdict"]
        if v.startswith(("rises", "falls")):
            word = v.split(",")[0]
            count = sum(s["verdict"].startswith(word) for s in per)
            tail = " - no more than random directions do" if "random" in v else ""
            parts.append(f"{e}{reading} {word} with dose for {count} of {len(per)} drugs ({numbers}{ctl}){tail}.")
        else:
            parts.append(f"{e}{reading} shows no monotonic trend with dose, a null (rises for {up} and falls for "
                         f"{down} of {len(per)} drugs; {numbers}{ctl}).")
    silent = [m.split(":", 1)[1] for m in metrics if m.startswith("feat:")
              and all(s["verdict"] == "constant reading" for s in stats if s["metric"] == m)]
    if silent:
        parts.append(f"The top SAE feature(s) of {', '.join(silent)} never change at this position (constant reading).")
    return " ".join(parts)


def _ci(lo: float, hi: float) -> str:
    return "-" if math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]"


def _p(s: dict[str, Any]) -> str:
    if math.isnan(s["p"]):
        return "-"
    return f"{s['p']:.2g}" + (" (exact)" if s["exact"] else "")


def _frac(s: dict[str, Any]) -> str:
    return f"{s['ctl_strong']}/{s['n_controls']}" if s["n_controls"] else "-"


# ---------------------------------------------------------------------------- figure


def _centered(points: dict[str, dict[str, float]], main: dict[str, dict[str, Any]], metric: str,
              drug: str) -> tuple[list[float], list[float]]:
    """(dose ratios, readings minus the drug's mean), in dose order."""
    pids = sorted((pid for pid in main if main[pid]["drug"] == drug and metric in points.get(pid, {})),
                  key=lambda pid: main[pid]["dose_ratio"])
    ys = [points[pid][metric] for pid in pids]
    mean = sum(ys) / len(ys) if ys else 0.0
    return [main[pid]["dose_ratio"] for pid in pids], [y - mean for y in ys]


def plot_dose(data: list[dict], path: Path, title: str) -> Path | None:
    """Reading vs dose / daily limit (log x): a panel per emotion (a row per reading kind), a line per drug,
    the random controls' central 90% as a grey band, and the daily limit at 1.0. Each line is centred on its
    drug's mean reading, as the pooled statistic is."""
    main, ctl = dose_points(data)
    if not main:
        return None
    plt = pyplot()
    metrics = sorted({m for p in main.values() for m in p if m.startswith(("vec:", "feat:"))})
    kinds = [k for k in ("vec:", "feat:") if any(m.startswith(k) for m in metrics)]
    emotions = list(dict.fromkeys(m.split(":", 1)[1] for m in metrics))
    drugs = list(dict.fromkeys(p["drug"] for p in main.values()))
    fig, axes = plt.subplots(len(kinds), len(emotions), figsize=(5 * len(emotions), 4 * len(kinds)), squeeze=False)
    for ri, kind in enumerate(kinds):
        for ci, e in enumerate(emotions):
            ax, m = axes[ri][ci], f"{kind}{e}"
            cm = "vec:random" if kind == "vec:" else m
            curves = [_centered(ctl[k], main, cm, d) for k in ctl for d in drugs]
            curves = [c for c in curves if len(c[0]) >= 2]
            if curves:
                lo_x = min(c[0][0] for c in curves)
                hi_x = max(c[0][-1] for c in curves)
                grid = np.geomspace(lo_x, hi_x, 60)
                band = np.full((len(curves), len(grid)), np.nan)
                for j, (xs, ys) in enumerate(curves):
                    inside = (grid >= xs[0]) & (grid <= xs[-1])
                    band[j, inside] = np.interp(np.log(grid[inside]), np.log(xs), ys)
                ok = np.isfinite(band).any(0)
                lo_y, hi_y = np.nanpercentile(band[:, ok], [5, 95], axis=0)
                ax.fill_between(grid[ok], lo_y, hi_y, color="grey", alpha=0.25,
                                label=("random directions" if kind == "vec:" else "matched random features") + " (5-95%)")
            for di, d in enumerate(drugs):
                xs, ys = _centered(main, main, m, d)
                if xs:
                    ax.plot(xs, ys, marker="o", ms=3, color=f"C{di % 10}", label=d)
            ax.axvline(1.0, color="red", ls=":", label="daily limit")
            ax.set_xscale("log")
            ax.set_xlabel("dose / label's daily limit")
            ax.set_ylabel(("projection on unit vector" if kind == "vec:" else "top-feature activation")
                          + " - drug mean")
            ax.set_title(f"{e} ({'vector' if kind == 'vec:' else 'SAE features'})")
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)
